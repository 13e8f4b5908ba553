"""The toolkit's user-facing errors: the CLI prints the message, not a traceback."""


class HptError(Exception):
    """A problem the user can fix (bad config, missing data, incompatible checkpoint...)."""


class ConfigError(HptError, ValueError):
    """A configuration problem, with a message meant for the user."""


class WorkFailed(HptError):
    """Submitted work ran and failed (a stage, an evaluation): exit code 1, not 2."""


USER_ERRORS = (HptError, FileNotFoundError)
# exit codes of the CLI: done, the work failed, the input was wrong
EXIT_DONE, EXIT_FAILED, EXIT_USER_ERROR = 0, 1, 2
