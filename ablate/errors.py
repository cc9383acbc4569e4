"""The one exception users see: a one-line message, printed by the CLI with exit code 2."""


class AblateError(ValueError):
    """Bad input: the message names the file or flag, the key, and what is allowed."""
