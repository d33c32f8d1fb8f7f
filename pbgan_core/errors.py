"""The one exception type that reaches the user as a single line."""


class PbganError(Exception):
    """A user-facing error: the message says what went wrong, where, and what to do.

    The CLI prints it as one line and exits non-zero; it never shows a traceback.
    """

    exit_code = 1


class UsageError(PbganError):
    """Bad names or options on the command line."""

    exit_code = 2
