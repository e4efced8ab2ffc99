"""The one exception type for user errors: the CLI prints its message as one line and exits non-zero."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name if it has none), at most `limit`
    characters: what a one-line error quotes of a library's failure."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class CircadianError(Exception):
    """A problem the user can fix (bad file, missing model, locked, nothing to do).

    The message is shown as is, on one line, without a traceback.
    """

    exit_code = 1
