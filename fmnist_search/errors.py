"""The one exception type users see: its message is the whole, actionable error line."""


class FmnistSearchError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits non-zero."""


class DataError(FmnistSearchError):
    """Fashion-MNIST is missing, corrupt or truncated."""


class ConfigError(FmnistSearchError):
    """A setting is invalid or conflicts with a stored study."""


class StorageError(FmnistSearchError):
    """The storage URL is malformed or unreachable, or a study does not exist."""


class DeviceError(FmnistSearchError):
    """The requested device is not available."""
