"""The toolkit's user-facing error base: the CLI prints the message, not a traceback."""


class HptError(Exception):
    """A problem the user can fix (bad config, missing data, incompatible checkpoint...)."""


USER_ERRORS = (HptError, FileNotFoundError)
