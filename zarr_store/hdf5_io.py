"""Reading array inputs (HDF5 with h5py, .npy memory-mapped, .npz members) block by block, and the
per-item facts inspection needs: the valid span inside the zero padding, no-data, flat, amplitude.

Blocks are (b, t, leads) whatever the file's layout; a task reads BLOCK items at a time, so no part
is ever whole in memory (a CODE-15% part is ~20,000 x 4096 x 12 float32 = 3.9 GB). An .npz member
stored uncompressed (np.savez) is memory-mapped inside the zip file; a compressed one
(np.savez_compressed) cannot be sliced on disk and is loaded whole, once per process (README).

Padding: CODE-15% centres 7-10 s of signal in 4096 samples with zeros on both sides. The valid span
of an item is from its first to its last frame in which some standard lead is not exactly 0.0 (a
real frame with all twelve leads exactly zero at the edge of the signal is dropped with the padding).
"""

from __future__ import annotations

import os
import zipfile

import numba as nb
import numpy as np

from zarr_store.array_sources import LEAD_ATTRS, UNITS_UV, ArrayInput, ArrayOptions, Part, resolve_leads
from zarr_store.errors import BadArgumentError
from zarr_store.paths import is_url, local_path, url_fs

BLOCK = 256  # items per read: 256 x 4096 x 12 float32 = 50 MB at most
ID_NAMES = ("exam_id", "ids", "record_id")

_OPEN: dict[str, object] = {}  # path -> open h5py.File / np.memmap / npz member, per process


_URL_FILES: list = []  # fsspec file objects under the h5py files of URLs, closed with them
URL_BLOCK = 8 << 20  # bytes per request when h5py reads a URL: a block of 256 CODE-15% exams is 50 MB


def _h5(path: str):
    """The open h5py.File of a local path or an fsspec URL (read through an fsspec file object)."""
    import h5py

    f = _OPEN.get(path)
    if f is None:
        if is_url(path):
            fs, inner = url_fs(path)
            handle = fs.open(inner, "rb", block_size=URL_BLOCK)
            _URL_FILES.append(handle)
            f = _OPEN[path] = h5py.File(handle, "r")
        else:
            f = _OPEN[path] = h5py.File(local_path(path), "r")
    return f


def close_all() -> None:
    """Close every file this process opened (after a conversion: a re-run may rewrite them)."""
    for f in [*_OPEN.values(), *_URL_FILES]:
        close = getattr(f, "close", None)
        if close is not None:
            close()
    _OPEN.clear()
    _URL_FILES.clear()


def read_error(exc: Exception) -> tuple[str, str]:
    """(quarantine reason, detail) of an exception raised opening or reading a part."""
    text = f"{type(exc).__name__}: {exc}"
    return ("truncated" if "truncat" in text.lower() or "eof" in text.lower() else "unreadable"), text


def _leads_attr(*nodes) -> tuple[str, ...] | None:
    for node in nodes:
        for key in LEAD_ATTRS:
            if key in node.attrs:
                v = node.attrs[key]
                names = [v] if isinstance(v, (str, bytes)) else list(v)
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
                if len(names) == 1 and "," in names[0]:
                    names = names[0].split(",")
                return tuple(n.strip() for n in names)
    return None


def open_code15_part(path: os.PathLike, opts: ArrayOptions) -> tuple[Part, list[str], tuple[str, ...] | None]:
    """(Part, exam ids as text, lead names from an attribute or None) of one exams_part<k>.hdf5. A part
    that cannot be opened or lacks ``tracings`` / ``exam_id`` comes back with ``error`` set and no ids:
    it is quarantined whole, the other parts converted."""
    path = str(path)
    try:
        f = _h5(path)
        if "tracings" not in f or "exam_id" not in f:
            return Part(path, "hdf5", "tracings", error=f"unreadable: no 'tracings' and 'exam_id' datasets "
                                                        f"(got {sorted(f.keys())})"), [], None
        ds = f["tracings"]
        if ds.ndim != 3 or len(f["exam_id"]) != ds.shape[0]:
            return Part(path, "hdf5", "tracings", error=f"unreadable: tracings {ds.shape}, exam_id "
                                                        f"{f['exam_id'].shape}: expected (N, T, 12) and (N,)"), [], None
        ids = [_id_text(v) for v in f["exam_id"][:]]
        layout = (opts.layout or "NTL").upper()
        n, t, n_leads = _ntl(ds.shape, layout)
        return Part(path, "hdf5", "tracings", layout, n, t, n_leads), ids, _leads_attr(ds, f)
    except OSError as exc:
        reason, detail = read_error(exc)
        return Part(path, "hdf5", "tracings", error=f"{reason}: {detail}"), [], None


def _id_text(v) -> str:
    if isinstance(v, bytes):
        return v.decode().strip()
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def _ntl(shape, layout: str) -> tuple[int, int, int]:
    return (shape[0], shape[1], shape[2]) if layout == "NTL" else (shape[0], shape[2], shape[1])


def open_generic(path, name: str | None, opts: ArrayOptions) -> ArrayInput:
    """An ArrayInput for ``file.h5[:dataset]``, ``file.npz[:member]`` or ``file.npy``; one Part. Raises
    BadArgumentError naming the file when it holds no (N, ., .) array, or when the rate, the lead
    names or the layout are not given and the file does not tell."""
    path = str(path)
    kind = "npy" if path.lower().endswith(".npy") else "npz" if path.lower().endswith(".npz") else "hdf5"
    if kind != "hdf5" and is_url(path):  # np.load maps local files only; over a URL it would read it whole
        raise BadArgumentError(f"source {path}: .npy and .npz arrays are read from local files; "
                               "give a local path, or store the array as HDF5 to read it from a URL")
    attr_leads, id_values, member = None, None, name
    if kind == "hdf5":
        try:
            f = _h5(path)
        except OSError as exc:
            raise BadArgumentError(f"source {path}: not a readable HDF5 file ({exc})") from None
        name = member = name or _only(path, [k for k in f if getattr(f[k], "ndim", 0) == 3])
        if name not in f or getattr(f[name], "ndim", 0) != 3:
            raise BadArgumentError(f"source {path}: expected a 3-D dataset named {name!r}, got "
                                   f"{sorted(f.keys())}")
        shape, attr_leads = f[name].shape, _leads_attr(f[name], f)
        rate_attr = f[name].attrs.get("fs", f[name].attrs.get("rate"))
        id_key = opts.ids or next((k for k in ID_NAMES if k in f and f[k].shape == (shape[0],)), None)
        if id_key is not None:
            if id_key not in f:
                raise BadArgumentError(f"ids: {path} has no dataset {id_key!r}")
            id_values = f[id_key][:]
    else:
        if kind == "npz" and name is None:  # resolved once: each block read looks the member up by name
            try:
                member = npz_member(path)
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                raise BadArgumentError(f"source {path}: not a readable npz file ({exc})") from None
        arr, rate_attr = _numpy_array(path, member, kind), None
        shape = arr.shape
        if opts.ids is not None:
            id_values = _numpy_ids(path, opts.ids)
    if len(shape) != 3:
        raise BadArgumentError(f"source {path}: expected an array (N, T, leads) or (N, leads, T), got shape {shape}")
    layout = _layout(path, shape, opts, attr_leads)
    n, t, n_leads = _ntl(shape, layout)
    leads, leads_from = resolve_leads(attr_leads, opts.leads, default=None, where=os.path.basename(path))
    if len(leads) != n_leads:
        raise BadArgumentError(f"leads: {path} holds {n_leads} leads, got {len(leads)} names ({','.join(leads)})")
    fs = opts.input_rate or (float(rate_attr) if rate_attr is not None else None)
    if fs is None:
        raise BadArgumentError(f"input_rate: {path} does not give its sampling rate; give it (--input-rate HZ)")
    if id_values is not None and len(id_values) != n:
        raise BadArgumentError(f"ids: expected {n} ids for {path}, got {len(id_values)}")
    ids = [_id_text(v) for v in id_values] if id_values is not None else [str(i) for i in range(n)]
    units = opts.units or "uV"
    part = Part(path, kind, member, layout, n, t, n_leads)
    base = os.path.basename(path)
    return ArrayInput(path if name is None else f"{path}:{name}", base if name is None else f"{base}:{name}",
                      [part], [ids], [None], float(fs), UNITS_UV[units.lower()], units, leads, leads_from)


def _only(path: str, names: list[str]) -> str:
    if len(names) != 1:
        raise BadArgumentError(f"source {path}: expected one 3-D dataset or FILE:DATASET, got {sorted(names)}")
    return names[0]


def _numpy_array(path: str, name: str | None, kind: str):
    """The array of an .npy (memory-mapped), or member ``name`` of an .npz; opened once per process."""
    try:
        if kind == "npy":
            arr = _OPEN.get(path)
            if arr is None:
                arr = _OPEN[path] = np.load(path, mmap_mode="r")
            return arr
        key = f"{path}:{name}"  # the member: open_generic resolved it when none was named
        if key not in _OPEN:
            with np.load(path) as z:
                if name not in z.files:
                    raise BadArgumentError(f"source {path}: no array {name!r} (got {z.files})")
                arr = _npz_member_map(path, name)
                _OPEN[key] = arr if arr is not None else z[name]
        return _OPEN[key]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BadArgumentError(f"source {path}: not a readable {kind} file ({exc})") from None


def _member_file(z: zipfile.ZipFile, name: str) -> str:
    """The zip entry of npz member ``name`` (np.savez writes ``name.npy``; other writers ``name``)."""
    return f"{name}.npy" if f"{name}.npy" in z.namelist() else name


def _read_npy_header(f) -> tuple | None:
    """(shape, fortran order, dtype) from an .npy stream at its magic, None for a format np.load
    alone reads."""
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    return None if read is None else read(f)


def npz_member(path: str) -> str:
    """The one 3-D member of an .npz, found from the members' headers (nothing decompressed whole)."""
    found = []
    with zipfile.ZipFile(path) as z:
        for entry in z.namelist():
            with z.open(entry) as f:
                head = _read_npy_header(f)
            if head is None or len(head[0]) == 3:  # a header we cannot read: np.load decides later
                found.append(entry[:-4] if entry.endswith(".npy") else entry)  # np.load's member name
    return _only(path, found)


def _npz_member_map(path: str, name: str) -> np.memmap | None:
    """Member ``name`` of an .npz memory-mapped where it is stored uncompressed (np.savez): the .npy
    bytes then lie as they are inside the zip file, after its local file header (30 bytes plus the
    name and extra fields). None for a compressed member (np.savez_compressed), which must be
    decompressed whole, an object array, or an .npy format newer than 2.0."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(_member_file(z, name))
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        f.seek(start)
        head = _read_npy_header(f)
        if head is None:
            return None
        shape, fortran, dtype = head
        offset = f.tell()
    if dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _numpy_ids(path: str, ids: str) -> np.ndarray:
    """Ids from an .npz member or a separate .npy/.txt file named by ``ids``."""
    if os.path.isfile(ids):
        with open(ids) as f:
            return np.load(ids) if ids.endswith(".npy") else np.array(f.read().split())
    if path.lower().endswith(".npz"):
        with np.load(path) as z:
            if ids in z.files:
                return z[ids]
    raise BadArgumentError(f"ids: expected an array in {path} or a file, got {ids!r}")


def _layout(path: str, shape, opts: ArrayOptions, attr_leads) -> str:
    """NTL or NLT: the option, else the shape when only one axis can hold the leads (<= 15 of them)."""
    if opts.layout is not None:
        return opts.layout.upper()
    n_leads = len(opts.leads or attr_leads or ())
    if n_leads and (shape[1] == n_leads) != (shape[2] == n_leads):
        return "NLT" if shape[1] == n_leads else "NTL"
    if (shape[1] <= 15) != (shape[2] <= 15):
        return "NLT" if shape[1] <= 15 else "NTL"
    raise BadArgumentError(f"layout: cannot tell the leads axis of {path} (shape {shape}); give --layout NTL or NLT")


def read_block(part: Part, lo: int, hi: int) -> np.ndarray:
    """Items [lo, hi) of ``part``: (hi - lo, t, n_leads), the file's dtype."""
    if part.kind == "hdf5":
        x = _h5(part.path)[part.dataset][lo:hi]
    else:
        x = np.asarray(_numpy_array(part.path, part.dataset, part.kind)[lo:hi])
    if not x.dtype.isnative:  # a big-endian file: the Numba kernels take native numbers
        x = x.astype(x.dtype.newbyteorder("="))
    return x.transpose(0, 2, 1) if part.layout == "NLT" else x


@nb.njit(cache=True, nogil=True)
def scan(x, sel):
    """Per item of ``x`` (b, t, leads), over leads ``sel``: (first, end) of the valid span (frames with
    a nonzero sample), the count of NaN samples in it, whether it is flat (every finite sample of a
    lead equals that lead's first one, for every lead) and the largest |value|. All (b,) arrays."""
    b, t, _ = x.shape
    n_sel = len(sel)
    first = np.zeros(b, np.int64)
    end = np.zeros(b, np.int64)
    nans = np.zeros(b, np.int64)
    flat = np.ones(b, np.bool_)
    peak = np.zeros(b, np.float64)
    ref = np.empty(n_sel, np.float64)
    for k in range(b):
        lo, hi = 0, t
        while lo < t and _zero_frame(x, k, lo, sel):
            lo += 1
        while hi > lo and _zero_frame(x, k, hi - 1, sel):
            hi -= 1
        first[k], end[k] = lo, hi
        bad, pk = 0, 0.0
        for i in range(lo, hi):  # branch-free: vectorized
            for c in range(n_sel):
                v = np.float64(x[k, i, sel[c]])
                bad += v != v
                pk = max(pk, abs(v))  # NaN compares false: left out
        moved = False  # a real ECG moves within its first frames: this loop ends at once
        ref[:] = np.nan
        for i in range(lo, hi):
            for c in range(n_sel):
                v = np.float64(x[k, i, sel[c]])
                if v == v:
                    if ref[c] != ref[c]:
                        ref[c] = v
                    elif v != ref[c]:
                        moved = True
                        break
            if moved:
                break
        nans[k], flat[k], peak[k] = bad, not moved, pk
    return first, end, nans, flat, peak


@nb.njit(cache=True, inline="always")
def _zero_frame(x, k, i, sel):
    for c in sel:
        if x[k, i, c] != 0.0:
            return False
    return True


def check_limb_leads(x: np.ndarray, names: tuple[str, ...], spans) -> str:
    """Why the limb leads of a block ``x`` (b, t, leads; leads named ``names``) are not in the order
    named, or "": every 12-lead device derives III, aVR, aVL, aVF from I and II, so II = I + III,
    aVR = -(I + II) / 2, aVL = (I - III) / 2 and aVF = (II + III) / 2 hold to its rounding; a
    residual above 5% of the signal's size means the columns are not the leads named. Nothing is
    checked when a limb lead is missing. The chest leads cannot be checked from the signal."""
    from zarr_store.wfdb_io import map_leads

    idx, _, _ = map_leads(tuple(names))
    if (idx[:6] < 0).any():
        return ""
    segs = [x[k, a:b][:, idx[:6]].astype(np.float64) for k, (a, b) in enumerate(spans) if b - a > 0]
    if not segs:
        return ""
    s = np.nan_to_num(np.concatenate(segs))
    i, ii, iii, avr, avl, avf = s.T
    scale = np.sqrt(np.mean(s**2)) + 1e-12
    checks = {"II = I + III": ii - i - iii, "aVR = -(I + II) / 2": avr + (i + ii) / 2,
              "aVL = (I - III) / 2": avl - (i - iii) / 2, "aVF = (II + III) / 2": avf - (ii + iii) / 2}
    failed = [f"{k} (residual {np.sqrt(np.mean(r**2)) / scale:.0%})" for k, r in checks.items()
              if np.sqrt(np.mean(r**2)) > 0.05 * scale]
    return "; ".join(failed)
