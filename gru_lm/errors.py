"""The one exception type for user mistakes: the CLI turns it into one line on stderr and exit 2."""


class UserError(Exception):
    """A mistake the user can fix (bad file, bad flag, bad checkpoint); never a bug of ours."""
