"""A `dict` of URL -> status shared by parallel crawler runs through a named key-value store.

Self-contained: copy this folder into another actor. The sync protocol is in `docs/sync-protocol.md`.
"""

from ._backends import (
    CONNECTION_PREFIXES,
    RESERVED_STORE_NAMES,
    StoreUnavailableError,
    check_connection,
    check_store_name,
    close_storage_client,
    open_store,
    open_with_client,
    storage_client_for,
)
from ._errors import InvalidOptionError, SharedMapError, SyncError, UnsupportedFormatError
from ._forwarding import ForwardingRequestManager
from ._periodic import RecurringTask
from ._records import FORMAT_VERSION
from ._request_manager import SharedRequestManager
from ._shared_map import SharedMap, SyncMode
from ._stats import RunStats, SharingStats, SyncResult
from ._urls import DONE, FAILED, PROCESSED, SKIPPED, map_key, map_key_of
from ._values import ENQUEUED

__all__ = [
    'CONNECTION_PREFIXES',
    'DONE',
    'ENQUEUED',
    'FAILED',
    'FORMAT_VERSION',
    'PROCESSED',
    'RESERVED_STORE_NAMES',
    'SKIPPED',
    'ForwardingRequestManager',
    'InvalidOptionError',
    'RecurringTask',
    'RunStats',
    'SharedMap',
    'SharedMapError',
    'SharedRequestManager',
    'SharingStats',
    'StoreUnavailableError',
    'SyncError',
    'SyncMode',
    'SyncResult',
    'UnsupportedFormatError',
    'check_connection',
    'check_store_name',
    'close_storage_client',
    'map_key',
    'map_key_of',
    'open_store',
    'open_with_client',
    'storage_client_for',
]
