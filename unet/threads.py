"""How many CPU threads torch computes with: the cores this process may use, less those others keep busy.

torch's CPU kernels run on an OpenMP team that meets at a barrier after every parallel region.
When another process shares a core, the OS deschedules one of our threads for a whole time slice
and every region waits for it: measured here (benchmarks/bench_contention.py), two threads beside
one busy core train at a third of their pace alone, while one thread keeps more than half. So:

* ``usable_cpus()``: the cores this process may run on (its CPU affinity, and the cgroup's CPU
  quota in a container), not ``os.cpu_count()``;
* ``ThreadGovernor``: ``threads: auto`` starts with every usable core and, every few seconds,
  measures how much CPU other processes took on those cores (``/proc/stat`` less this process's
  own time) and gives torch the cores left free (at least one); a busy core returns to us when the
  other process stops. A fixed ``threads: N`` is kept as it is.

Where ``/proc`` is not there (macOS) the governor keeps its first choice.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BUSY_SHARE = 0.6  # a core counts as taken when other processes use this share of it or more
FIRST_LOOK_S = 2.0  # the first decision, after this much work
LOOK_EVERY_S = 10.0


def cgroup_cpu_limit(cgroup_file: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max``, v1 ``cfs_quota_us``), the
    smallest along its ancestors; None when there is none."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2
            folder = root / relative
            while True:
                quota = _read(folder / "cpu.max")
                if quota and quota.split()[0] != "max":
                    limits.append(int(quota.split()[0]) / int(quota.split()[1]))
                if folder == root or root not in folder.parents:
                    break
                folder = folder.parent
        elif "cpu" in controllers.split(","):  # cgroup v1
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
                quota, period = _read(mount / relative / "cpu.cfs_quota_us"), _read(mount / relative / "cpu.cfs_period_us")
                if quota and period and int(quota) > 0:
                    limits.append(int(quota) / int(period))
                    break
    return min(limits) if limits else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def affinity() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def usable_cpus() -> int:
    """Cores this process may use: its affinity, capped by the cgroup's quota (at least one)."""
    cores = len(affinity())
    quota = cgroup_cpu_limit()
    return max(1, min(cores, math.floor(quota + 1e-6)) if quota else cores)


# ---------------------------------------------------------------- what the others use

def _busy_jiffies(cpus: set[int], stat: Path = Path("/proc/stat")) -> int | None:
    """Non-idle time of ``cpus`` since boot, in clock ticks (``/proc/stat`` per-CPU lines)."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy


def _own_seconds() -> float:
    """CPU seconds of this process (all its threads) and its children that ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class CpuSample:
    wall: float = field(default_factory=time.monotonic)
    busy: int | None = None
    own: float = 0.0

    @classmethod
    def now(cls, cpus: set[int]) -> CpuSample:
        return cls(time.monotonic(), _busy_jiffies(cpus), _own_seconds())


def others_cores(before: CpuSample, after: CpuSample, tick: float = 1 / os.sysconf("SC_CLK_TCK")) -> float | None:
    """Cores' worth of CPU that other processes used on our cores between two samples."""
    wall = after.wall - before.wall
    if before.busy is None or after.busy is None or wall <= 0:
        return None
    return max(0.0, ((after.busy - before.busy) * tick - (after.own - before.own)) / wall)


def free_cores(usable: int, others: float) -> int:
    """The cores left to us when other processes use ``others`` cores' worth (at least one)."""
    return max(1, min(usable, usable - math.floor(others + 1 - BUSY_SHARE)))


# ---------------------------------------------------------------- the governor

class ThreadGovernor:
    """torch's CPU thread count for a long loop: ``tick()`` after each step (cheap: a clock read;
    every ``LOOK_EVERY_S`` seconds a look at ``/proc/stat``)."""

    def __init__(self, requested: int | str = "auto") -> None:
        self.auto = requested == "auto"
        self.usable = usable_cpus()
        self.cpus = affinity()
        self.threads = self.usable if self.auto else int(requested)
        self.changes: list[tuple[float, int, float]] = []  # (seconds since start, threads, others' cores)
        self.started = time.monotonic()
        self._sample = CpuSample.now(self.cpus)
        self._next = self.started + FIRST_LOOK_S
        torch.set_num_threads(self.threads)

    def tick(self) -> None:
        if not self.auto or time.monotonic() < self._next:
            return
        now = CpuSample.now(self.cpus)
        others = others_cores(self._sample, now)
        self._sample, self._next = now, time.monotonic() + LOOK_EVERY_S
        if others is None:
            return
        threads = free_cores(self.usable, others)
        if threads != self.threads:
            log.info("CPU threads %d -> %d: other processes use %.1f of the %d cores this process may use",
                     self.threads, threads, others, self.usable)
            self.threads = threads
            self.changes.append((round(now.wall - self.started, 1), threads, round(others, 2)))
            torch.set_num_threads(threads)

    def describe(self) -> str:
        """For train.json: ``auto (2 usable): 2, 1 at 12 s, 2 at 80 s`` or ``2 (fixed)``."""
        if not self.auto:
            return f"{self.threads} (fixed)"
        steps = "".join(f", {t} at {s:.0f} s" for s, t, _ in self.changes)
        return f"auto ({self.usable} usable): {self.usable}{steps}"


def settle_threads(requested: int | str = "auto", look_s: float = 0.5) -> int:
    """One choice for a short stage (prediction, scoring): look at the others for ``look_s``, then
    set torch's threads to the free cores (or ``requested``); returns the count."""
    if requested != "auto":
        torch.set_num_threads(int(requested))
        return int(requested)
    cpus, usable = affinity(), usable_cpus()
    before = CpuSample.now(cpus)
    time.sleep(look_s)
    others = others_cores(before, CpuSample.now(cpus))
    threads = usable if others is None else free_cores(usable, others)
    torch.set_num_threads(threads)
    return threads
