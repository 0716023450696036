"""Base error type. CLI commands map TidalError to a one-line message and exit code 2."""

from pydantic import ValidationError


class TidalError(Exception):
    """A user-facing error whose message names the bad value. Never an internal bug."""


def first_error(e: ValidationError, *, empty_loc: str = "", show_input: bool = True) -> str:
    """One line naming the first pydantic validation error: ``loc: msg (got value)``.

    `loc` is the dotted field path (`empty_loc` when the error is about the whole object);
    pydantic's "Value error, " prefix is dropped; the offending value is shown when it is a
    scalar and `show_input` is set (containers would flood the line).
    """
    first = e.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or empty_loc
    msg = str(first["msg"]).removeprefix("Value error, ")
    inp = first.get("input")
    shown = f" (got {inp!r})" if show_input and not isinstance(inp, dict | list) else ""
    return f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}"
