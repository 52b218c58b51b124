"""The speed scripts' one timing harness: the machine's name, timing a callable (warm-up,
repeats, median/min/max, wall or CPU clock), interleaving candidates, peak memory.

The scripts run as `python speed/X.py`, so this folder is `sys.path[0]` and they
`import harness` as a sibling module:

    import harness
    timing = harness.time_call(lambda: aligner.align(image, boxes), repeats=5, warmup=1)
    print(f"{timing.median * 1000:.1f} ms on {harness.cpu_name()}")
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# "wall" counts waiting (I/O, other processes); "cpu" counts this process's own work on all threads
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


# --- the machine -----------------------------------------------------------------------


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _lscpu_model_name() -> str | None:
    """`lscpu`'s "Model name" (it decodes ARM part numbers, which /proc/cpuinfo lacks)."""
    if shutil.which("lscpu") is None:
        return None
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return None


def cpu_name(cores: bool = False) -> str:
    """The CPU's model name as `lscpu` gives it (e.g. "Intel(R) Xeon(R) Platinum 8480+"),
    with ", N logical cores" when `cores`."""
    name = _cpuinfo_field("model name") or _lscpu_model_name() or platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} logical cores" if cores else name


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo `flags`; empty where the file lacks them)."""
    return set((_cpuinfo_field("flags") or "").split())


# --- timing ----------------------------------------------------------------------------


@dataclass
class Timing:
    """The seconds of each timed call, with their median, minimum and maximum."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, clock: str = "wall",
              sync: Callable[[], object] | None = None, budget_s: float | None = None) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed on `clock` ("wall" or
    "cpu"). `sync` runs inside each timed call's span (e.g. `torch.cuda.synchronize`, so that
    asynchronous work is counted); past `budget_s` seconds of timing, stop after two repeats."""
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    seconds: list[float] = []
    deadline = time.perf_counter() + budget_s if budget_s is not None else None
    for _ in range(repeats):
        start = now()
        fn()
        if sync is not None:
            sync()
        seconds.append(now() - start)
        if deadline is not None and time.perf_counter() > deadline and len(seconds) >= 2:
            break
    return Timing(seconds)


def time_interleaved(candidates: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                     clock: str = "wall", rotate: bool = True) -> dict[str, Timing]:
    """Time several candidates in turns (A B A B ...), so that a slow phase of a shared machine
    falls on all of them alike; `rotate` starts each round one candidate later (A B, B A) so that
    none always runs right after the same other one."""
    now = CLOCKS[clock]
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            start = now()
            candidates[name]()
            seconds[name].append(now() - start)
    return {name: Timing(values) for name, values in seconds.items()}


# --- memory ----------------------------------------------------------------------------


def reset_peak_memory() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib() -> float:
    """This process's peak resident memory in MiB (since start or the last reset)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
