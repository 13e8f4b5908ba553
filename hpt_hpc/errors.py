"""The toolkit's user-facing errors: the CLI prints the message, not a traceback."""


class HptError(Exception):
    """A problem the user can fix (bad config, missing data, incompatible checkpoint...)."""


class ConfigError(HptError, ValueError):
    """A configuration problem, with a message meant for the user."""


USER_ERRORS = (HptError, FileNotFoundError)
