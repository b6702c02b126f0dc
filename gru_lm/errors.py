"""The one exception type for user mistakes (the CLI turns it into one line on stderr and exit 2), and the seed check
that every command shares."""


class UserError(Exception):
    """A mistake the user can fix (bad file, bad flag, bad checkpoint); never a bug of ours."""


def check_seed(seed: int, name: str = "--seed") -> int:
    """A seed torch accepts, or UserError naming the option."""
    if not 0 <= seed < 2**63:
        raise UserError(f"{name} must be in [0, 2^63), not {seed}")
    return seed
