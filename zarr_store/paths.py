"""Local path or fsspec URL: the one place that tells them apart (conversion, WFDB reading, store I/O)."""

from __future__ import annotations


def is_url(path) -> bool:
    """An fsspec URL (``memory://``, ``s3://``, ...) rather than a local path (``file://`` is local)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path) -> str:
    """A local path without its ``file://`` prefix, if any."""
    text = str(path)
    return text[len("file://"):] if text.startswith("file://") else text


def url_fs(url: str):
    """(fsspec file system, path inside it) of a URL."""
    import fsspec

    return fsspec.core.url_to_fs(url)


def cat_url(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of the file at ``url`` (a byte range when given)."""
    fs, path = url_fs(url)
    if fs.isdir(path):
        raise IsADirectoryError(21, "Is a directory")
    return fs.cat_file(path, start=start, end=end)
