"""The one exception type for user errors: the CLI prints its message as one line and exits non-zero."""


class CircadianError(Exception):
    """A problem the user can fix (bad file, missing model, locked, nothing to do).

    The message is shown as is, on one line, without a traceback.
    """

    exit_code = 1
