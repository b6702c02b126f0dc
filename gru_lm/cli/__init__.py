"""The `gru-lm` command line: a thin layer that parses options, makes one library call per command and prints."""
