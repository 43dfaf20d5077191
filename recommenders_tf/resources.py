"""Wall time and peak resident memory of the named stages of one process.

`StageMeter.stage(name)` measures one stage: wall seconds, and the peak resident set size
(RSS) reached *during* the stage. On Linux the kernel keeps that peak itself (`VmHWM` in
/proc/self/status) and lets a process reset it (writing 5 to /proc/self/clear_refs), so the
figure is exact rather than sampled. Where that is not available (other systems, a read-only
/proc), the peak is the process's lifetime maximum from `resource.getrusage`, and each row
says which of the two it reports.

    meter = StageMeter()
    with meter.stage("retrieval training", examples=len(train)):
        ...
    meter.rows  # [{"stage": ..., "seconds": ..., "peak_rss_mb": ..., "examples": ...}]

Each row also has the resident memory when the stage began and when it ended (`rss_start_mb`,
`rss_end_mb`): a peak is what the stage added on top of what earlier stages left resident.
At the end of a stage the C heap's free pages go back to the system (glibc `malloc_trim`):
TensorFlow's CPU tensors are malloc'ed from many per-thread arenas, and what a stage freed
would otherwise stay counted as resident, and raise every later stage's peak, until reused.

Stages do not nest: a stage inside another would reset the outer one's peak.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import re
import resource
import sys
import time
from typing import Any, Dict, Iterator, List, Optional

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def release_free_memory() -> bool:
    """Returns the C heap's free pages to the system (glibc only); False where unavailable."""
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or not name:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def _status_kb(field: str) -> Optional[int]:
    try:
        with open(_STATUS) as f:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _lifetime_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_peak() -> bool:
    """Restarts the kernel's peak-RSS counter at the current RSS; False if it cannot."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def rss_mb() -> Optional[float]:
    """Current resident set size in MB (None where /proc is missing)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> float:
    """Peak RSS in MB since the last `reset_peak` (or since the process started)."""
    kb = _status_kb("VmHWM")
    return kb / 1024 if kb is not None else _lifetime_peak_mb()


class StageMeter:
    """Collects one row per measured stage; see the module docstring."""

    def __init__(self, log=None):
        self.rows: List[Dict[str, Any]] = []
        self.log = log

    @contextlib.contextmanager
    def stage(self, name: str, **facts: Any) -> Iterator[Dict[str, Any]]:
        """Measures the body; `facts` (and keys the body adds to the yielded dict, such as
        an example count known only at the end) are stored with the row."""
        exact = reset_peak()
        row: Dict[str, Any] = {"stage": name, **facts}
        start_rss = rss_mb()
        start = time.perf_counter()
        try:
            yield row
        finally:
            row["seconds"] = round(time.perf_counter() - start, 3)
            row["peak_rss_mb"] = round(peak_rss_mb(), 1)
            row["peak_scope"] = "stage" if exact else "process"
            release_free_memory()
            end_rss = rss_mb()
            if start_rss is not None and end_rss is not None:
                row["rss_start_mb"] = round(start_rss, 1)
                row["rss_end_mb"] = round(end_rss, 1)
            self.rows.append(row)
            if self.log is not None:
                self.log(f"[meter] {name}: {row['seconds']:.1f} s, peak RSS "
                         f"{row['peak_rss_mb']:.0f} MB")

    def total_seconds(self) -> float:
        return round(sum(r["seconds"] for r in self.rows), 3)

    def peak_mb(self) -> float:
        return max((r["peak_rss_mb"] for r in self.rows), default=0.0)


@contextlib.contextmanager
def maybe_stage(meter: Optional[StageMeter], name: str, **facts: Any):
    """`meter.stage(name)` when a meter is given, else a no-op yielding a throwaway dict."""
    if meter is None:
        yield dict(facts)
    else:
        with meter.stage(name, **facts) as row:
            yield row
