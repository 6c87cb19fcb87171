"""CPU threads: the cores this process may use (affinity, cgroup quota), less those others keep busy."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unet import threads
from unet.threads import CpuSample, ThreadGovernor, cgroup_cpu_limit, free_cores, others_cores, usable_cpus


def cgroup(tmp_path: Path, line: str, files: dict[str, str]) -> tuple[Path, Path]:
    (tmp_path / "proc").write_text(line + "\n")
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text)
    return tmp_path / "proc", tmp_path / "fs"


@pytest.mark.parametrize("line, files, cores", [
    ("0::/", {"cpu.max": "max 100000"}, None),                                        # v2, no quota
    ("0::/job", {"cpu.max": "max 100000", "job/cpu.max": "150000 100000"}, 1.5),      # v2: 1.5 cores
    ("0::/a/b", {"a/cpu.max": "100000 100000", "a/b/cpu.max": "400000 100000"}, 1.0),  # the parent's is smaller
    ("4:cpu,cpuacct:/docker/x", {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "200000",
                                 "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000"}, 2.0),  # v1
    ("4:cpu,cpuacct:/", {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, None),
])
def test_the_cgroup_quota_is_read_in_cores(tmp_path, line, files, cores):
    assert cgroup_cpu_limit(*cgroup(tmp_path, line, files)) == cores


@pytest.mark.parametrize("usable, others, expected", [
    (2, 0.0, 2), (2, 0.3, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 1.9, 1), (2, 3.0, 1),
    (8, 1.0, 7), (8, 2.5, 6), (8, 2.6, 5), (1, 0.9, 1),
])
def test_the_cores_others_keep_busy_are_left_to_them(usable, others, expected):
    assert free_cores(usable, others) == expected


def test_others_are_the_busy_time_less_our_own():
    before = CpuSample(wall=0.0, busy=1000, own=5.0)
    after = CpuSample(wall=2.0, busy=1400, own=7.0)  # 4 s busy on our cores, 2 s of them ours
    assert others_cores(before, after, tick=0.01) == pytest.approx(1.0)
    assert others_cores(CpuSample(busy=None), after) is None  # no /proc: no judgement


def test_usable_cpus_never_exceeds_the_affinity():
    assert 1 <= usable_cpus() <= len(threads.affinity())


def test_a_fixed_count_is_kept():
    governor = ThreadGovernor(1)
    governor._next = 0.0
    governor.tick()
    assert governor.threads == 1 and torch.get_num_threads() == 1 and governor.describe() == "1 (fixed)"


@pytest.mark.skipif(usable_cpus() < 2, reason="one core: nothing to leave to another process")
def test_auto_gives_up_a_core_that_another_process_keeps_busy():
    """A real busy process on this machine: the governor's next look leaves it a core."""
    governor = ThreadGovernor("auto")
    assert governor.threads == usable_cpus()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        governor._sample = CpuSample.now(governor.cpus)
        time.sleep(1.5)
        governor._next = 0.0
        governor.tick()
    finally:
        hog.kill()
        hog.wait()
    assert governor.threads <= usable_cpus() - 1
    assert "at" in governor.describe()  # the change is on record (train.json)
    torch.set_num_threads(usable_cpus())
