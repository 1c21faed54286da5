"""WFDB archives -> one chunked, sharded Zarr v3 store, and a fast batched reader for it."""
