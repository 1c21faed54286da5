"""What a conversion did: ``ConvertSummary`` and the closing summary ``crema-fast convert`` prints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from zarr_store.shard_writer import StoreIO


@dataclass
class ConvertSummary:
    """What a conversion did. ``skipped``: reason -> records; ``leads_present``: lead -> converted
    records that have it; ``dropped_signals``: signal name -> records it was dropped from."""

    store: str
    converted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    rows_total: int = 0
    leads_present: dict[str, int] = field(default_factory=dict)
    dropped_signals: dict[str, int] = field(default_factory=dict)
    clipped_samples: int = 0
    invalid_samples: int = 0
    bytes_on_disk: int = 0
    signal_bytes: int = 0
    raw_bytes: int = 0
    compression_ratio: float = 0.0
    seconds: float = 0.0
    shards_written: int = 0
    shards_resumed: int = 0
    report: str = ""
    note: str = ""
    phases: dict[str, float] = field(default_factory=dict)  # WFDB conversions: seconds per step (Laps)

    @property
    def records_per_s(self) -> float:
        return self.converted / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        """The closing summary printed by ``crema-fast convert``."""
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        leads = " ".join(f"{k}:{v}" for k, v in self.leads_present.items())
        lines = [
            f"store          {self.store}",
            f"converted      {self.converted} records -> {self.rows} rows ({self.rows_total} in the store)",
            f"skipped        {sum(self.skipped.values())} ({skipped})" + (f"; report {self.report}" if self.skipped else ""),
            f"leads present  {leads}",
        ]
        if self.dropped_signals:
            lines.append("dropped        " + ", ".join(f"{k} x{v}" for k, v in sorted(self.dropped_signals.items())))
        if self.clipped_samples or self.invalid_samples:
            lines.append(f"samples        {self.clipped_samples} clipped to int16, {self.invalid_samples} no-data set to 0")
        lines += [
            f"bytes on disk  {self.bytes_on_disk / 1e6:.1f} MB (signals {self.signal_bytes / 1e6:.1f} MB)",
            f"compression    {self.compression_ratio:.2f}x over raw int16",
            f"time           {self.seconds:.1f} s ({self.records_per_s:.0f} records/s)"
            + (f", {self.shards_resumed} shards already done" if self.shards_resumed else ""),
        ]
        if self.note:
            lines.append(f"note           {self.note}")
        return "\n".join(lines)


class Laps:
    """Wall-clock seconds per named step of a conversion: ``lap(name)`` closes the step that ran since
    the previous lap (or ``t0``). ``seconds`` keeps the order the steps ran in. Why: a conversion's
    set-up (finding records, opening the store, loading the chunk encoder) and its end (metadata) run
    in this process alone, and bound what workers can gain (benchmarks/bench_store.py, Amdahl)."""

    def __init__(self, t0: float):
        self.t, self.seconds = t0, {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.t
        self.t = now


def fill_store_sizes(io: StoreIO, n: int, window: int, summary: ConvertSummary) -> ConvertSummary:
    """Set the store-wide fields of ``summary``: rows, bytes on disk, compression of ``signals``."""
    summary.rows_total = n
    summary.bytes_on_disk = io.size()
    summary.signal_bytes = io.size("signals")
    summary.raw_bytes = n * 12 * window * 2
    summary.compression_ratio = summary.raw_bytes / summary.signal_bytes if summary.signal_bytes else 0.0
    return summary
