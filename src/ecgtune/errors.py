"""Problems with the user's input or surroundings: the command line prints them on one line and
exits with 2; and the interruptions that end a command with every finished piece of work saved."""


class UserError(Exception):
    """Bad input from the user (config or data): reported without a traceback, exit status 2."""


class ConfigError(UserError):
    """A config key or value is wrong; the message names the key, the value and what is allowed."""


class DataError(UserError):
    """A data file is missing, corrupt or malformed; the message names the file (and row)."""


class TrackingError(UserError):
    """The MLflow tracking store cannot be reached or refused a call (a lost server): the search
    stops with every finished trial saved, and the same command resumes it later."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the command line's handler: everything that cleans
    up after Ctrl-C (closing runs as KILLED, removing partial files) runs for it too; the exit
    status is 143 instead of 130."""


def interruption(exc: KeyboardInterrupt) -> str:
    """How a run's status reason names the interruption."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
