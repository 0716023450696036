"""Base error type. CLI commands map TidalError to a one-line message and exit code 2."""


class TidalError(Exception):
    """A user-facing error whose message names the bad value. Never an internal bug."""
