"""The error type the CLI turns into a one-line message and a non-zero exit code."""


class ClanetError(Exception):
    """A user-facing failure; the message names the file (if any) and the reason."""
