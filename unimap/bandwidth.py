"""How fast each device reads memory, and what a hand-over between devices costs: the inputs of
the plan's decode-speed model (unimap/plan.py `decode_speed`).

GPU figures are the makers' published peak memory bandwidths, looked up by the name the backend
reports; a name not in the table is unknown (None), never a guess. A CPU's rate is not published:
on unified memory it is assumed to be half of the shared bandwidth (said so in its source), and
a discrete machine's host RAM is unknown unless a preset names it. Nothing here is measured at
run time (tools/bench_runtime.py measures this machine's rates).
"""

from __future__ import annotations

import re

GB = 10**9

# (pattern on the reported device name, bytes/s, where the figure comes from); first match wins
GPU_BANDWIDTHS: tuple[tuple[str, int, str], ...] = (
    (r"\bM1 Ultra\b", 800 * GB, "Apple M1 Ultra spec"),
    (r"\bM1 Max\b", 400 * GB, "Apple M1 Max spec"),
    (r"\bM1 Pro\b", 200 * GB, "Apple M1 Pro spec"),
    (r"\bM1\b", 68 * GB, "Apple M1 spec (68.25 GB/s)"),
    (r"\bM2 Ultra\b", 800 * GB, "Apple M2 Ultra spec"),
    (r"\bM2 Max\b", 400 * GB, "Apple M2 Max spec"),
    (r"\bM2 Pro\b", 200 * GB, "Apple M2 Pro spec"),
    (r"\bM2\b", 100 * GB, "Apple M2 spec"),
    (r"\bM3 Ultra\b", 819 * GB, "Apple M3 Ultra spec"),
    (r"\bM3 Max\b", 400 * GB, "Apple M3 Max spec (40-core GPU; 300 GB/s with 30 cores)"),
    (r"\bM3 Pro\b", 150 * GB, "Apple M3 Pro spec"),
    (r"\bM3\b", 100 * GB, "Apple M3 spec"),
    (r"\bM4 Max\b", 546 * GB, "Apple M4 Max spec (40-core GPU; 410 GB/s with 32 cores)"),
    (r"\bM4 Pro\b", 273 * GB, "Apple M4 Pro spec"),
    (r"\bM4\b", 120 * GB, "Apple M4 spec"),
    (r"\bM5\b", 153 * GB, "Apple M5 spec"),
    (r"\bH200\b", 4800 * GB, "NVIDIA H200 spec"),
    (r"\bGH200\b", 4000 * GB, "NVIDIA GH200 96 GB HBM3 spec"),
    (r"\bH100\b.*\bPCIe\b", 2000 * GB, "NVIDIA H100 PCIe spec"),
    (r"\bH100\b.*\bNVL\b", 3900 * GB, "NVIDIA H100 NVL spec"),
    (r"\bH100\b", 3350 * GB, "NVIDIA H100 SXM spec"),
    (r"\bA100\b.*\b40GB\b", 1555 * GB, "NVIDIA A100 40GB spec"),
    (r"\bA100\b", 2039 * GB, "NVIDIA A100 80GB SXM spec"),
    (r"\bL40S\b", 864 * GB, "NVIDIA L40S spec"),
    (r"\bRTX 5090\b", 1792 * GB, "NVIDIA RTX 5090 spec"),
    (r"\bRTX 4090\b", 1008 * GB, "NVIDIA RTX 4090 spec"),
    (r"\bRTX 3090\b", 936 * GB, "NVIDIA RTX 3090 spec"),
    (r"\bGB10\b", 273 * GB, "NVIDIA DGX Spark spec (LPDDR5x, shared with the CPU)"),
    (r"\bThor\b", 273 * GB, "NVIDIA Jetson AGX Thor spec"),
    (r"\bOrin\b.*\bNano\b", 68 * GB, "NVIDIA Jetson Orin Nano spec"),
    (r"\bOrin\b.*\bNX\b", 102 * GB, "NVIDIA Jetson Orin NX spec"),
    (r"\bOrin\b", 204 * GB, "NVIDIA Jetson AGX Orin spec (204.8 GB/s)"),
)

# The CPU cores of a system-on-chip reach only part of its memory bandwidth (the GPU is what the
# memory system is sized for); half is an assumption, said so wherever it is used.
UNIFIED_CPU_SHARE = 0.5

# Seconds to hand a token's activation from one device's stream to the other's. Measured on the
# development VM's CPU build (34-41 us, tools/bench_runtime.py --roofline); Metal and CUDA are
# not measured yet: a command buffer or kernel queue has to finish before the other side reads.
CROSSING_SECONDS = {"cpu": 40e-6, "metal": 150e-6, "cuda": 50e-6}
CROSSING_SOURCES = {"cpu": "measured on the development VM (two CPU streams)",
                    "metal": "assumed (not measured on a Mac yet)",
                    "cuda": "assumed (not measured on a GPU yet)"}


def gpu_bandwidth(name: str) -> tuple[int, str] | None:
    """The published memory bandwidth (bytes/s) of a GPU by its reported name, and the source;
    None when the name is not in the table."""
    for pattern, rate, source in GPU_BANDWIDTHS:
        if re.search(pattern, name):
            return rate, source
    return None


def unified_cpu_bandwidth(gpu_rate: int) -> tuple[int, str]:
    """A unified machine's CPU read rate: an assumed share of the shared memory's bandwidth."""
    return int(gpu_rate * UNIFIED_CPU_SHARE), (
        f"assumed: {UNIFIED_CPU_SHARE:g} x the shared memory's {gpu_rate / GB:g} GB/s")


def crossing_seconds(backend: str) -> tuple[float, str]:
    """The cost of one hand-over between the GPU's and the CPU's streams on `backend`."""
    key = backend if backend in CROSSING_SECONDS else "cpu"
    return CROSSING_SECONDS[key], CROSSING_SOURCES[key]
