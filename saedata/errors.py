"""One exception type per kind of user mistake.

Every error a user can cause derives from :class:`SaedataError`; the CLI prints its
message as one line on stderr and exits with code 1. Messages name the file, line or
option at fault, so that the user can fix the input without reading a traceback.
"""

from __future__ import annotations


class SaedataError(Exception):
    """Base class for every error caused by user input or configuration."""


class InputError(SaedataError):
    """A corpus file is malformed: bad JSON, missing field, bad UTF-8, duplicate id ...

    ``path`` and ``line`` (1-based; for CSV and Parquet the row number, header excluded)
    are kept as attributes so callers can point at the problem.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)
        self.message = message
        self.path = path
        self.line = line


class UnsupportedFormatError(InputError):
    """The file type cannot be told from its extension, or is not one we read."""


class SAEFormatError(SaedataError):
    """An SAE directory is missing, corrupt, of an unknown format, or inconsistent."""


class DimensionMismatchError(SaedataError):
    """An SAE's ``d_in`` does not match the width of the reader layer it is applied to."""


class ReaderError(SaedataError):
    """A reader model cannot be loaded, or the requested layer or device does not exist."""


class StoreError(SaedataError):
    """The concept store cannot be opened or does not hold what was asked for."""


class SchemaVersionError(StoreError):
    """The store was written by a newer saedata (or is not a saedata store at all)."""


class StoreLockedError(StoreError):
    """Another process holds the store open for writing."""


class NotFoundError(StoreError):
    """A dataset, document, SAE or latent named by the user is not in the store."""


class ConfigError(SaedataError):
    """An option value is out of range or inconsistent with another option."""


class LLMError(SaedataError):
    """The LLM endpoint cannot be reached or refuses every request (wrong URL, key or model)."""
