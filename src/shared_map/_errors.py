from __future__ import annotations


class SharedMapError(Exception):
    """Base class of the errors raised by the shared map."""


class UnsupportedFormatError(SharedMapError):
    """A record in the store was written by a newer, unknown version of the shared-map format.

    Reading it could misinterpret data that a newer writer relies on, so the map refuses to sync
    instead of guessing. Upgrade this code, or use a separate store.
    """

    def __init__(self, key: str, version: object, supported: int) -> None:
        super().__init__(
            f'Record "{key}" has shared-map format version {version!r}, but this code reads versions up to '
            f'{supported}. Upgrade the shared-map module, or point this run at another store.'
        )
        self.key = key
        self.version = version


class SyncError(SharedMapError):
    """A sync could not write or read the store. Local state is kept; the next sync retries."""


class InvalidOptionError(SharedMapError, ValueError):
    """An option of the shared map has an invalid value (e.g. a run id with characters a record key cannot hold)."""
