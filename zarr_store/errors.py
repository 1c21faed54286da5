"""The store's error hierarchy: messages say what was expected and what was found."""


class StoreError(Exception):
    """Base of every error zarr_store raises on purpose (bad input, bad store, corrupt data)."""


class BadArgumentError(StoreError, ValueError):
    """A bad argument: missing folder, no records found, an output that is not a store."""


class MissingColumnError(StoreError):
    """A store lacks a per-record array the caller needs (it was converted before that array was kept);
    the message names the store, the array and the way out (re-convert)."""


class CorruptChunkError(StoreError):
    """A chunk that fails to decode; the message names the chunk and the records in it."""


class RecordError(StoreError):
    """One record cannot be converted; conversion skips it and lists the reason in the report."""
