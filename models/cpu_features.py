"""What this CPU offers for int8 inference: the VNNI dot-product instructions, read from /proc/cpuinfo.

ONNX Runtime's int8 kernels run on any x86 CPU, but only VNNI (AVX-512 VNNI on server parts, AVX-VNNI on
newer client parts) multiplies u8×s8 and accumulates in one instruction without the 16-bit saturation of the
older AVX2 path; without it an int8 model is barely faster than fp32 and can lose accuracy. So int8 is chosen
by default only where one of these flags is present (``workers/precision.py``).
"""
from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The Linux flag names of the two VNNI variants.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def parse_cpu_flags(cpuinfo_text: str) -> frozenset[str]:
    """The flags every listed processor has (x86 ``flags``, Arm ``Features`` lines); none in an empty text."""
    per_cpu = [
        frozenset(value.split())
        for key, _, value in (line.partition(":") for line in cpuinfo_text.splitlines())
        if key.strip() in ("flags", "Features")
    ]
    return frozenset.intersection(*per_cpu) if per_cpu else frozenset()


def vnni_flags(flags: frozenset[str]) -> tuple[str, ...]:
    """The VNNI flags among ``flags``, in ``VNNI_FLAGS`` order; empty when the CPU has no VNNI."""
    return tuple(flag for flag in VNNI_FLAGS if flag in flags)


def read_cpu_flags(path: Path = CPUINFO) -> frozenset[str]:
    """This machine's CPU flags; empty where /proc/cpuinfo cannot be read (not Linux), which means 'no VNNI'."""
    try:
        return parse_cpu_flags(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def cpu_model_name(path: Path = CPUINFO) -> str:
    """The first ``model name`` line of /proc/cpuinfo (for reports), or 'unknown CPU'."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown CPU"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return "unknown CPU"
