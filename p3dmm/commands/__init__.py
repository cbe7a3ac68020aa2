"""The per-stage commands of `p3dmm` (`p3dmm/cli.py` parses and dispatches): each parses nothing itself,
calls one library function, prints the summary it returns and picks the exit code."""


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""
