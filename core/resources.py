"""What this process may use of the machine."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one (containers
    and ``taskset`` narrow it), else the machine's count; at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cpu_has_bf16_matrix_units() -> bool:
    """True when this CPU multiplies bfloat16 matrices natively (Intel AMX tiles).

    Without them torch emulates bfloat16 convolutions, slower than float32.
    """
    import torch

    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


#: What ``cpu_precision`` may be, for the translators and nnU-Net alike.
CPU_PRECISIONS = ("fp32", "bf16", "auto")


def cpu_trains_in_bf16(cpu_precision: str) -> bool:
    """Whether CPU training with ``cpu_precision`` runs under bfloat16 autocast: ``bf16``
    always, ``auto`` where the CPU has AMX, ``fp32`` never."""
    if cpu_precision not in CPU_PRECISIONS:
        raise ValueError(f"cpu_precision must be one of {', '.join(CPU_PRECISIONS)}, got {cpu_precision!r}")
    return cpu_precision == "bf16" or (cpu_precision == "auto" and cpu_has_bf16_matrix_units())
