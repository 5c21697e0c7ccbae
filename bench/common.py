"""Pieces shared by the orchestrator and the generator workers.

The message body carries everything a receiver needs to measure and check a
delivery, in fixed-width decimal fields so that parsing is one slice each:

    SSS TTTTTTTTTTTTTTTTTTTT GGGGGGG CCCCCCCCCC xxxx...
    step  intended send time   sender  sender's
          (CLOCK_MONOTONIC ns) id      counter

CLOCK_MONOTONIC is one clock for every process of the machine, so a worker can
subtract a time written by another worker. The intended time is the time the
open-loop schedule meant to send the message, not the time it was written: a
stalled sender or server shows up as latency instead of hiding it
(coordinated omission).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

BODY_HEAD = 40  # 3 + 20 + 7 + 10
# Histograms in microseconds, 1 us .. 120 s, 3 significant digits.
HIST_LOW, HIST_HIGH, HIST_DIGITS = 1, 120_000_000, 3
CLK_TCK = os.sysconf("SC_CLK_TCK")


def make_body(step: int, intended_ns: int, sender: int, counter: int, pad: str) -> str:
    return f"{step:03d}{intended_ns:020d}{sender:07d}{counter:010d}{pad}"


def new_hist() -> HdrHistogram:
    return HdrHistogram(HIST_LOW, HIST_HIGH, HIST_DIGITS)


def record_many(hist: HdrHistogram, values: Iterable[int] | array) -> None:
    """Record a batch of values (us); counted with numpy, then one call per distinct value."""
    import numpy as np

    arr = np.asarray(values, dtype=np.int64)
    if arr.size == 0:
        return
    arr = np.clip(arr, HIST_LOW, HIST_HIGH)
    uniq, counts = np.unique(arr, return_counts=True)
    for value, count in zip(uniq.tolist(), counts.tolist(), strict=True):
        hist.record_value(value, count)


def hist_summary(hist: HdrHistogram) -> dict[str, float]:
    """Percentiles in milliseconds."""
    if hist.get_total_count() == 0:
        return {"count": 0}
    return {
        "count": hist.get_total_count(),
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p90_ms": hist.get_value_at_percentile(90) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "p99_9_ms": hist.get_value_at_percentile(99.9) / 1000,
        "max_ms": hist.get_max_value() / 1000,
        "mean_ms": hist.get_mean_value() / 1000,
    }


def decode_hist(encoded: str | None) -> HdrHistogram:
    hist = new_hist()
    if encoded:
        hist.decode_and_add(encoded)
    return hist


# -- /proc ---------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0.0
    # The command name may hold spaces: fields start after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def tcp_mem_kib() -> int:
    """Kernel memory of all TCP sockets on the machine (socket buffers), /proc/net/sockstat."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    parts = line.split()
                    return int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError):
        pass
    return 0


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import platform
    import sys

    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }
