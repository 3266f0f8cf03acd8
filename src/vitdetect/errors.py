"""The one exception type the CLI turns into a one-line message and an exit code."""


class VitdetectError(Exception):
    """A problem the user can fix: printed as one line, never as a traceback."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(VitdetectError):
    """Bad settings or arguments: exit code 2, like any command-line usage error."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that temp files are removed on the way out; exit code 143."""

    exit_code = 143
