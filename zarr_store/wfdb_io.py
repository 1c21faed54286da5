"""Fast WFDB reading: a small header parser, numpy readers for the common formats, the wfdb fallback and
lead mapping. Record discovery and metadata (header comments, PTB-XL's table) are in zarr_store.sources.

Why our own parser: ``wfdb.rdheader`` costs about 3 ms per record, more than reading and encoding the
signal (see shared/notes/zarr-store.md). ``wfdb`` stays the fallback for what we do not parse
(multi-segment records, formats other than 16/61/80/212/24/32, several samples per frame, skew) and the
test oracle.

Header grammar handled (PhysioNet's ``header(5)``):
record line ``name[/nseg] nsig [fs[/counter[(base)]] [nsamp [time [date]]]]``; signal lines
``file fmt[xspf][:skew][+offset] [gain[(baseline)][/units] [adcres [adczero [init [cksum [bsize
[description]]]]]]]``; ``#`` comment lines and blank lines anywhere; CR/LF line ends. Signals that share a
file are interleaved frame by frame, so one file is read once for all its signals.

Paths may be fsspec URLs (``memory://``, ``s3://``): files are then fetched with ``fs.cat_file``
(byte ranges for signal files); the wfdb fallback needs local files.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from zarr_store.errors import RecordError
from zarr_store.paths import cat_url, is_url, url_fs

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

# Normalized name (lower case, no spaces, '-' or '_', no leading "lead") -> standard lead.
_LEAD_ALIASES: dict[str, str] = {name.lower(): name for name in LEADS}
_LEAD_ALIASES.update({
    "mli": "I", "mlii": "II", "mliii": "III", "ml1": "I", "ml2": "II", "ml3": "III",
    "d1": "I", "d2": "II", "d3": "III", "di": "I", "dii": "II", "diii": "III",
    "1": "I", "2": "II", "3": "III",
})
_LEAD_INDEX = {name: i for i, name in enumerate(LEADS)}

# Sample value that WFDB reads as "no data" (NaN in wfdb's physical signal), per format.
INVALID = {16: -32768, 61: -32768, 80: -128, 212: -2048, 24: -(1 << 23), 32: -(1 << 31)}
NUMPY_FORMATS = frozenset(INVALID)
# Bytes per sample, as (numerator, denominator): 212 packs two samples in three bytes.
_BYTES = {16: (2, 1), 61: (2, 1), 80: (1, 1), 212: (3, 2), 24: (3, 1), 32: (4, 1)}

_UNIT_TO_UV = {"mv": 1000.0, "uv": 1.0, "\u00b5v": 1.0, "\u03bcv": 1.0, "v": 1e6, "nv": 1e-3}

_FMT_RE = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN_RE = re.compile(r"^([-+]?[\d.]+(?:[eE][-+]?\d+)?)(?:\(([-+]?\d+)\))?(?:/(\S+))?$")
_FS_RE = re.compile(r"^([\d.]+(?:[eE][-+]?\d+)?)(?:/([\d.]+(?:[eE][-+]?\d+)?)(?:\(([-\d.]+)\))?)?$")


@dataclass(frozen=True)
class SignalSpec:
    """One signal line. ``gain`` is ADC units per physical unit; ``baseline`` the ADC value of 0."""

    fmt: int
    spf: int = 1
    skew: int = 0
    offset: int = 0
    gain: float = 200.0
    baseline: int = 0
    units: str = "mV"
    adc_zero: int = 0
    description: str = ""
    uv: float = field(init=False, repr=False)  # µV per ADC unit, computed once (specs are cached)

    def __post_init__(self):
        object.__setattr__(self, "uv", self.uv_per_unit)

    @property
    def uv_per_unit(self) -> float:
        """Microvolts per ADC unit: (1 / gain) x the physical unit in µV (mV when the unit is unknown)."""
        return _UNIT_TO_UV.get(self.units.strip().lower(), 1000.0) / self.gain


class Header(NamedTuple):
    """A parsed single-segment header (``n_seg`` > 1 marks a multi-segment record, read through wfdb).
    ``files[i]`` is the signal file of ``signals[i]``. A NamedTuple: made once per record, in a
    fraction of a frozen dataclass's time."""

    name: str
    n_sig: int
    fs: float
    sig_len: int
    signals: tuple[SignalSpec, ...]
    files: tuple[str, ...] = ()
    comments: tuple[str, ...] = ()
    counter_freq: float | None = None
    n_seg: int = 1
    layout: Layout | None = None  # what parse_header computed; None: computed when asked

    @property
    def facts(self) -> Layout:
        return self.layout if self.layout is not None else _layout(self.signals, _file_pattern(self.files))

    @property
    def numpy_readable(self) -> bool:
        """True when every signal is in a format our numpy readers handle."""
        return self.n_seg == 1 and self.facts.numpy_readable


@dataclass(frozen=True)
class Layout:
    """What follows from a header's signal lines alone, file names aside. An archive repeats a
    handful of them (PTB-XL: one, with a different file name per record), so parse_header computes
    this once per distinct set of lines: a PTB-XL header then parses in ~9 µs, ~19 without."""

    numpy_readable: bool  # every signal in a format our numpy readers handle, and in a file
    group_lines: tuple[tuple[int, ...], ...]  # the signals of each signal file, files in order of appearance
    descriptions: tuple[str, ...]
    mixed: int | None  # a signal whose file holds signals of different formats, else None
    unit_scale: bool  # every signal is in µV with baseline 0: ADC values are the stored values


def _file_pattern(files: tuple[str, ...]) -> tuple[int, ...]:
    """Per signal, the first signal in the same file (-1: no file, "~")."""
    if files and files[0] != "~" and files.count(files[0]) == len(files):  # one file (most headers)
        return (0,) * len(files)
    first: dict[str, int] = {}
    return tuple(-1 if f == "~" else first.setdefault(f, i) for i, f in enumerate(files))


def _layout(signals: tuple[SignalSpec, ...], pattern: tuple[int, ...]) -> Layout:
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(pattern):
        groups.setdefault(i if g < 0 else g, []).append(i)
    mixed = next((idx[0] for idx in groups.values() if any(signals[i].fmt != signals[idx[0]].fmt for i in idx)), None)
    readable = all(s.fmt in NUMPY_FORMATS and s.spf == 1 and s.skew == 0 for s in signals) and -1 not in pattern
    return Layout(readable, tuple(tuple(idx) for idx in groups.values()), tuple(s.description for s in signals),
                  mixed, all(s.uv == 1.0 and s.baseline == 0 for s in signals))


@functools.lru_cache(maxsize=1024)
def _signal_lines(key: tuple[tuple[str, str, str, str], ...], pattern: tuple[int, ...]) -> tuple[tuple[SignalSpec, ...], Layout]:
    """(signals, layout) of signal lines given as (format, gain, ADC zero, description) and which
    signals share a file (_file_pattern)."""
    signals = tuple(_signal_spec(*k) for k in key)
    return signals, _layout(signals, pattern)


# Plausible sampling rates: below 1 Hz no heartbeat is resolved, and 1e-30 Hz once reached the
# resampler as a division by zero.
MIN_FS, MAX_FS = 1.0, 1_000_000.0


def _bad(what: str) -> RecordError:
    return RecordError(f"malformed header: {what}")


def parse_header(text: str) -> Header:
    """Parse the text of a ``.hea`` file; raises RecordError("malformed header: ...")."""
    stripped = list(map(str.strip, text.splitlines()))
    if "#" in text:
        lines = [line for line in stripped if line and not line.startswith("#")]
        comments = [line[1:].strip() for line in stripped if line.startswith("#")]
    else:  # most headers (PTB-XL): one pass less
        lines, comments = list(filter(None, stripped)), []
    if not lines:
        raise _bad("no record line")
    rec = lines[0].split()
    if len(rec) < 2:
        raise _bad(f"record line {lines[0]!r} has fewer than 2 fields")
    name, n_seg = rec[0], 1
    if "/" in name:
        name, seg = name.split("/", 1)
        n_seg = _int(seg, "segment count")
    n_sig = _int(rec[1], "signal count")
    fs, counter = 250.0, None
    if len(rec) > 2 and rec[2].isdigit():  # "500": most headers
        fs = float(rec[2])
    elif len(rec) > 2:
        m = _FS_RE.match(rec[2])
        if not m:
            raise _bad(f"sampling frequency {rec[2]!r}")
        fs = float(m.group(1))
        counter = float(m.group(2)) if m.group(2) else None
    if not (MIN_FS <= fs <= MAX_FS):  # NaN fails too
        raise _bad(f"sampling frequency {rec[2]} Hz: expected {MIN_FS:g} to {MAX_FS:,.0f} Hz")
    sig_len = _int(rec[3], "number of samples") if len(rec) > 3 else 0
    if n_sig < 0 or sig_len < 0:
        raise _bad("negative signal count or length")
    if n_seg > 1:  # segment lines are "name nsamp": wfdb reads these records
        return Header(name, n_sig, fs, sig_len, (), (), tuple(comments), counter, n_seg)
    if len(lines) - 1 < n_sig:
        raise _bad(f"{n_sig} signals announced, {len(lines) - 1} signal lines found")
    files, key = [], []
    for line in lines[1 : 1 + n_sig]:
        f = line.split(None, 8)
        if len(f) < 2:
            raise _bad(f"signal line {line!r} has fewer than 2 fields")
        # The file name differs between records and so do the initial value and checksum (fields 5,
        # 6, not used); the rest repeats across an archive, so each distinct set is parsed once.
        n = len(f)
        files.append(f[0])
        key.append((f[1], f[2] if n > 2 else "", f[4] if n > 4 else "", f[8].strip() if n > 8 else ""))
    files = tuple(files)
    signals, layout = _signal_lines(tuple(key), _file_pattern(files))
    return Header(name, n_sig, fs, sig_len, signals, files, tuple(comments), counter, n_seg, layout)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _bad(f"{what} {text!r} is not an integer") from None


@functools.lru_cache(maxsize=4096)
def _signal_spec(fmt_text: str, gain_text: str, adc_zero_text: str, description: str) -> SignalSpec:
    m = _FMT_RE.match(fmt_text)
    if not m:
        raise _bad(f"signal format {fmt_text!r}")
    fmt, spf, skew, offset = int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 0), int(m.group(4) or 0)
    gain, baseline, units = 200.0, None, "mV"
    if gain_text:
        g = _GAIN_RE.match(gain_text)
        if not g:
            raise _bad(f"gain {gain_text!r}")
        gain = float(g.group(1)) or 200.0  # WFDB: a gain of 0 means the default, 200
        baseline = int(g.group(2)) if g.group(2) is not None else None
        units = g.group(3) or "mV"
    adc_zero = _int(adc_zero_text, "ADC zero") if adc_zero_text else 0
    return SignalSpec(fmt, spf, skew, offset, gain, adc_zero if baseline is None else baseline,
                      units, adc_zero, description)


def read_header(path: str | os.PathLike) -> Header:
    """Read and parse ``path`` (a ``.hea`` file; a local path or an fsspec URL)."""
    try:
        raw = cat_url(str(path)) if is_url(path) else _read_small(path)
    except FileNotFoundError:
        raise RecordError(f"missing header: {os.path.basename(path)}") from None
    except IsADirectoryError:
        raise RecordError(f"unreadable: {os.path.basename(path)} is a folder, not a header file") from None
    except OSError as exc:
        raise RecordError(f"unreadable header: {exc.strerror or exc}") from None
    try:  # UTF-8 first, so that signal file names with non-ASCII letters name the files on disk
        text = raw.decode("utf-8") if not raw.isascii() else raw.decode("ascii")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # older headers: any byte is a character
    return parse_header(text)


def _read_small(path) -> bytes:
    """A whole local file through os.open / os.read: ~4 µs less than open().read() (no file object),
    which counts once per record."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = []
        while True:
            part = os.read(fd, 1 << 16)
            if not part:
                break
            parts.append(part)
            if len(part) < 1 << 16:
                break  # a short read: the end of the file (a header is a regular file)
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def signal_groups(header: Header) -> dict[str, tuple[int, ...]]:
    """Signal file name -> indices of its signals, in header order (the frame order inside the file)."""
    return {header.files[idx[0]]: idx for idx in header.facts.group_lines}


def expected_bytes(fmt: int, n_values: int) -> int:
    num, den = _BYTES[fmt]
    return -(-n_values * num // den)


def truncated(file: str, held: int, offset: int, samples: int, need: int) -> RecordError:
    """The one message for a signal file shorter than its header says (checked from its size before
    reading, or found short while reading): bytes held after the offset, samples announced, bytes needed."""
    return RecordError(f"truncated: {file} holds {held:,} bytes after offset {offset}, the header's {samples:,} "
                       f"samples need {need:,}")


def check_files(header: Header, directory: str | os.PathLike) -> int:
    """Check that every signal file exists and holds ``sig_len`` frames; returns the frame count
    (derived from the file size when the header gives none). Raises RecordError otherwise."""
    n = header.sig_len
    for file, idx in signal_groups(header).items():
        spec = header.signals[idx[0]]
        try:
            if is_url(directory):
                fs, path = url_fs(os.path.join(directory, file))
                info = fs.info(path)
                regular, size = info.get("type") == "file", int(info.get("size") or 0)
            else:
                st = os.stat(os.path.join(directory, file))
                regular, size = stat.S_ISREG(st.st_mode), st.st_size
        except FileNotFoundError:
            raise RecordError(f"missing signal file: {file}") from None
        except OSError as exc:
            raise RecordError(f"unreadable: {exc.strerror or exc}") from None
        if not regular:
            raise RecordError(f"unreadable: {file} is not a regular file")
        size -= spec.offset
        if spec.fmt not in _BYTES:
            continue  # read through wfdb, which checks itself
        if n == 0:
            num, den = _BYTES[spec.fmt]
            n = (max(size, 0) * den // num) // len(idx)
        elif size < expected_bytes(spec.fmt, n * len(idx)):
            raise truncated(file, max(size, 0), spec.offset, n * len(idx), expected_bytes(spec.fmt, n * len(idx)))
    return n


class ReadBuffer:
    """Memory for signal-file reads that is used again: reading a 120 kB PTB-XL file into fresh
    memory took 34 µs on our VMs, into memory already touched 17 µs (page faults)."""

    def __init__(self):
        self._buf = bytearray()

    @property
    def nbytes(self) -> int:
        return len(self._buf)

    def view(self, nbytes: int) -> memoryview:
        if len(self._buf) < nbytes:  # a new bytearray: arrays over the old one stay valid
            self._buf = bytearray(nbytes)
        return memoryview(self._buf)[:nbytes]


def read_digital(header: Header, directory: str | os.PathLike, n: int | None = None,
                 buffer: ReadBuffer | None = None) -> np.ndarray:
    """ADC values, shape (n, n_sig) in frame order: int16 when every file is format 16 and one file
    holds all signals (a view of the file's bytes, no copy), int32 otherwise. ``n`` frames (default
    ``header.sig_len``). With ``buffer``, a local single file is read into it: an int16 result is
    then a view of it, valid until the buffer is used again. Raises RecordError on a missing, short
    or unreadable file."""
    n = header.sig_len if n is None else n
    facts = header.facts
    if facts.mixed is not None:
        raise _bad(f"signals in {header.files[facts.mixed]} have different formats")
    groups = facts.group_lines
    out = None
    for idx in groups:
        spec = header.signals[idx[0]]
        if header.files[idx[0]].lower().endswith(".mat"):
            check_mat_header(os.path.join(directory, header.files[idx[0]]), spec.offset, len(idx), n)
        values = _read_file(os.path.join(directory, header.files[idx[0]]), spec.fmt, spec.offset, n * len(idx),
                            buffer if len(groups) == 1 else None).reshape(n, len(idx))
        if len(groups) == 1:
            return values
        if out is None:
            out = np.empty((n, header.n_sig), dtype=np.int32)
        out[:, list(idx)] = values
    if out is None:
        return np.empty((n, 0), dtype=np.int32)
    return out


# MATLAB v4 matrix types (MOPT, little-endian, real, full): float64, float32, int32, int16, uint16, uint8.
_MAT4_TYPES = (0, 10, 20, 30, 40, 50)


def check_mat_header(path: str, offset: int, n_sig: int, n: int) -> None:
    """A ``.mat`` signal file (CinC, PhysioNet's wfdb2mat) opens with a MATLAB v4 matrix header: type,
    rows, columns, imaginary flag, name length, then the name; the samples start at ``offset`` (the
    header's ``16+24``). Without that header the bytes are not the matrix the header announces (random
    bytes were once stored as an ECG): RecordError("not a MATLAB file: ...")."""
    name = os.path.basename(path)
    try:
        head = cat_url(path, 0, 20) if is_url(path) else _read_small_prefix(path, 20)
    except FileNotFoundError:
        raise RecordError(f"missing signal file: {name}") from None
    except OSError as exc:
        raise RecordError(f"unreadable: {name}: {exc.strerror or exc}") from None
    if head[:6] == b"MATLAB":  # a v5 file: its own header, checked by its 'MATLAB 5.0 MAT-file' text
        return
    if len(head) < 20:
        raise RecordError(f"not a MATLAB file: {name} holds {len(head)} bytes, a MATLAB v4 header needs 20")
    mopt, rows, cols, imag, namelen = np.frombuffer(head, "<i4").tolist()
    expected = f"type in {_MAT4_TYPES}, a real {n_sig} x {n or 'N'} matrix, data at byte {offset}"
    ok = (mopt in _MAT4_TYPES and imag == 0 and 20 + namelen == offset and rows > 0 and cols > 0
          and (not n or sorted((rows, cols)) == sorted((n_sig, n))) and n_sig in (rows, cols))
    if not ok:
        raise RecordError(f"not a MATLAB file: {name} has no MATLAB v4 header (expected {expected}; got type "
                          f"{mopt}, {rows} x {cols}, imaginary {imag}, name of {namelen} bytes)")


def _read_small_prefix(path: str, nbytes: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, nbytes, 0)
    finally:
        os.close(fd)


def _read_file(path: str, fmt: int, offset: int, count: int, buffer: ReadBuffer | None = None) -> np.ndarray:
    nbytes = expected_bytes(fmt, count)
    try:
        if is_url(path):
            raw = cat_url(path, offset, offset + nbytes)
            return _decode(raw, nbytes, fmt, offset, count, path)
        fd = os.open(path, os.O_RDONLY)  # os.pread: one copy, and no file object (~2 µs a record)
        try:
            # Before any allocation: a header announcing 10^12 samples once ended in a bare MemoryError.
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # a folder opens too, and reads as EISDIR
                raise RecordError(f"unreadable: {os.path.basename(path)} is not a regular file")
            held = max(st.st_size - offset, 0)
            if held < nbytes:
                raise truncated(os.path.basename(path), held, offset, count, nbytes)
            if buffer is not None:
                view, got = buffer.view(nbytes), 0
                while got < nbytes:  # a read returns at most ~2 GiB at a time
                    k = os.preadv(fd, [view[got:]], offset + got)
                    if not k:
                        break
                    got += k
                raw = view[:got]
            else:
                raw = os.pread(fd, nbytes, offset)
                while len(raw) < nbytes:
                    more = os.pread(fd, nbytes - len(raw), offset + len(raw))
                    if not more:
                        break
                    raw += more
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise RecordError(f"missing signal file: {os.path.basename(path)}") from None
    except OSError as exc:
        raise RecordError(f"unreadable: {exc.strerror or exc}") from None
    return _decode(raw, nbytes, fmt, offset, count, path)


def _decode(raw: bytes | memoryview, nbytes: int, fmt: int, offset: int, count: int, path: str) -> np.ndarray:
    if len(raw) < nbytes:
        raise truncated(os.path.basename(path), len(raw), offset, count, nbytes)
    b = np.frombuffer(raw, dtype=np.uint8)
    if fmt == 16:
        return b.view("<i2")
    if fmt == 61:
        return b.view(">i2").astype(np.int16)
    if fmt == 32:
        return b.view("<i4")
    if fmt == 80:
        return b.astype(np.int16) - 128
    if fmt == 24:
        t = b.reshape(-1, 3).astype(np.int32)
        v = t[:, 0] | (t[:, 1] << 8) | (t[:, 2] << 16)
        return np.where(v >= 1 << 23, v - (1 << 24), v)
    if fmt == 212:  # two 12-bit samples in three bytes: low byte, shared nibbles, low byte
        padded = np.zeros(-(-len(b) // 3) * 3, dtype=np.int32)
        padded[: len(b)] = b
        t = padded.reshape(-1, 3)
        v = np.empty((len(t), 2), dtype=np.int32)
        v[:, 0] = t[:, 0] | ((t[:, 1] & 0x0F) << 8)
        v[:, 1] = t[:, 2] | ((t[:, 1] & 0xF0) << 4)
        v = v.reshape(-1)[:count]
        return np.where(v >= 2048, v - 4096, v)
    raise RecordError(f"unsupported format {fmt}")


# Formats wfdb reads that the numpy readers do not.
_WFDB_FORMATS = {"8", "310", "311", "508", "516", "524"}


def _header_specs(record_path) -> tuple:
    try:
        return read_header(str(record_path) + ".hea").signals
    except Exception:  # noqa: BLE001 - only for a better message
        return ()


def read_physical_wfdb(record_path: Path) -> tuple[np.ndarray, list[str], list[float]]:
    """Fallback through wfdb: physical values in µV, shape (n, n_sig) float64 (NaN = no data),
    the signal names and µV per physical unit of each signal."""
    import wfdb

    if is_url(record_path):
        raise RecordError("unreadable: this format is read through wfdb, which needs a local file")
    try:
        rec = wfdb.rdrecord(str(record_path), physical=True)
    except Exception as exc:  # wfdb raises many types for bad files; all mean "unreadable" here
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        fmts = sorted({str(s.fmt) for s in _header_specs(record_path)} - {str(f) for f in _BYTES} - _WFDB_FORMATS)
        if fmts:
            raise RecordError(f"unreadable: signal format {', '.join(fmts)} is not a WFDB format ({what})") from None
        raise RecordError(f"unreadable: wfdb could not read the record ({what})") from None
    if rec.p_signal is None:
        raise RecordError("unreadable: wfdb returned no signal")
    scale = [_UNIT_TO_UV.get((u or "mV").strip().lower(), 1000.0) for u in rec.units]
    return rec.p_signal * np.asarray(scale), list(rec.sig_name), scale


def map_leads(names: list[str] | tuple[str, ...]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Standard lead order for signal names: (source index per lead, shape (12,) int, -1 = missing;
    names of the signals dropped; sign per lead, shape (12,) int8). A second signal that maps to a lead
    already taken is dropped. A leading minus names an inverted lead ("-aVR" is -1 x aVR, as in the
    Cabrera display): its sign is -1, so that the store holds the lead itself."""
    idx, dropped, sign = _map_leads(tuple(names))
    return idx.copy(), list(dropped), sign.copy()


@functools.lru_cache(maxsize=1024)
def _map_leads(names: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    idx = np.full(len(LEADS), -1, dtype=np.int64)
    sign = np.ones(len(LEADS), dtype=np.int8)
    dropped = []
    for i, raw in enumerate(names):
        key = re.sub(r"\s", "", raw.lower())
        if key.startswith("lead") and len(key) > 4:
            key = key[4:]
        negated = key[:1] in ("-", "\u2212")  # ASCII hyphen or the Unicode minus sign
        key = re.sub(r"[_\-\u2212]", "", key)
        lead = _LEAD_ALIASES.get(key)
        if lead is None or idx[_LEAD_INDEX[lead]] >= 0:
            dropped.append(raw)
        else:
            idx[_LEAD_INDEX[lead]] = i
            sign[_LEAD_INDEX[lead]] = -1 if negated else 1
    return idx, tuple(dropped), sign
