"""Problems with the user's input: the command line prints them on one line and exits with 2."""


class UserError(Exception):
    """Bad input from the user (config or data): reported without a traceback, exit status 2."""


class ConfigError(UserError):
    """A config key or value is wrong; the message names the key, the value and what is allowed."""


class DataError(UserError):
    """A data file is missing, corrupt or malformed; the message names the file (and row)."""
