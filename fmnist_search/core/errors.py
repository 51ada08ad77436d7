"""The one exception type users see: its message is the whole, actionable error line."""


class FmnistSearchError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with ``exit_code``."""

    exit_code = 2  # bad input, as click uses for usage errors


class DataError(FmnistSearchError):
    """Fashion-MNIST is missing, corrupt or truncated."""


class ConfigError(FmnistSearchError):
    """A setting is invalid or conflicts with a stored study."""


class StorageError(FmnistSearchError):
    """The storage URL is malformed or unreachable, or a study does not exist."""


class DeviceError(FmnistSearchError):
    """The requested device is not available."""


class Stopped(FmnistSearchError):
    """The work ended early: an interrupt (exit 130/143), a lost store or failed workers (exit 1).

    ``error=False``: a plain line, not ``error: ...`` (a worker of `run --jobs` stopped with it:
    its run says the one error line for all of them)."""

    def __init__(self, message: str, exit_code: int, error: bool = True) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.error = error
