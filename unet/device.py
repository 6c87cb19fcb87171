"""Where the network runs and in which precision: one rule for training and prediction."""

from __future__ import annotations

import functools
from contextlib import nullcontext
from pathlib import Path

import torch

from unet.errors import EnvironmentMismatch
from unet.threads import usable_cpus

DEVICES = ("auto", "cuda", "cpu")


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without a GPU is an error, not a fallback."""
    if name not in DEVICES:
        raise ValueError(f"device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise EnvironmentMismatch("device 'cuda' was asked for but torch sees no CUDA device: use 'auto' or 'cpu'")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether the CPU kernels torch runs here multiply bf16 natively (AVX512-BF16 or AMX).

    The CPU's flags are not enough: torch may be capped to older kernels (``ATEN_CPU_CAPABILITY=avx2``,
    ``ONEDNN_MAX_CPU_ISA=AVX2``, as on a CPU without AVX-512), and emulated bf16 is slower than fp32.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    return native and cpu_kernels() in ("AVX512", "AMX") and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_kernels() -> str:
    """The CPU kernels torch dispatches to here: ``AVX512``, ``AVX2``, ``DEFAULT`` (``ATEN_CPU_CAPABILITY``)."""
    return torch.backends.cpu.get_cpu_capability()


def precision(device: torch.device, amp: bool = True) -> str:
    """What ``autocast(device, amp)`` computes in: ``bf16`` or ``fp32``."""
    return "bf16" if amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())) else "fp32"


def autocast(device: torch.device, amp: bool = True):
    """bf16 autocast on CUDA, and on CPUs with native bf16 (3x the fp32 rate measured on one)."""
    if precision(device, amp) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def share_threads(workers: int) -> int:
    """Give each of ``workers`` threads its share of torch's CPU threads (they would only fight over
    the cores this process may use); returns the threads each gets."""
    threads = max(1, usable_cpus() // workers)
    torch.set_num_threads(threads)
    return threads
