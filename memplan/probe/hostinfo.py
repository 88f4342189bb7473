"""The host facts a probe record carries for the step-time model: CPU cores and the GPUs' links.

No torch: ``os`` for the cores, ``nvidia-smi`` for the links (absent or failing: None). Fields, added
to the record's ``environment``:

- host_cpus: logical CPUs this process may run on (os.sched_getaffinity, else os.cpu_count);
- gpu_link: "nvlink" when ``nvidia-smi topo -m`` shows an NV# entry between two GPUs, "pcie" when it
  shows only PIX/PXB/PHB/NODE/SYS, None with fewer than two GPUs or without nvidia-smi;
- pcie_gen, pcie_width: the first GPU's current host link (nvidia-smi --query-gpu pcie.link.*);
- cpu_model: the host CPU's name (/proc/cpuinfo "model name", else platform.processor(), else None): the same
  plans differed by up to 19% between two H200 machines, and the terms fitted on one H100 machine's records
  sized another H100's steps 1.5-2x slow (docs/benchmarks.md, 2026-12-06); the framework term is host time;
- gpu_sm_clock_max_mhz, gpu_power_limit_w, gpu_power_max_limit_w: the first GPU's highest SM clock and its
  enforced and largest possible power limit (nvidia-smi --query-gpu clocks.max.sm, power.limit,
  power.max_limit): two cards of one name run at different speeds when one is power-capped, and Sa2VA-1B's
  ZeRO-2 + offload step was 1.64x slower on one H100 machine than another, with its forward and backward
  1.5x slower too (docs/benchmarks.md, sets j and n), which the host terms alone do not explain.
Two more facts are measured before the model exists (``host_load``, handed to ``environment`` with the
dispatch cost, since after the run they would count the probe's own work):

- host_load_1m: the host's 1-minute load average before the model is built (os.getloadavg; None where absent): a
  one-GPU ZeRO-3 step is bound by the host's Python and kernel launches, and the same plan ran 1.5x slower in
  one run than another on the same kind of card (docs/benchmarks.md, 2026-12-07), so a record says how busy
  the host was. It counts the work of the minute before (a previous probe of a batch included);
- gpu_processes: the compute processes ``nvidia-smi --query-compute-apps`` lists at that moment, on every GPU
  of the host (None without nvidia-smi). The probe's own ranks are among them once their CUDA context exists,
  so more than the world size means another job shares the cards.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any


GPU_LIMITS = ("gpu_sm_clock_max_mhz", "gpu_power_limit_w", "gpu_power_max_limit_w")
HOST_FACTS = ("host_cpus", "gpu_link", "pcie_gen", "pcie_width", "cpu_model", *GPU_LIMITS)
HOST_LOAD = ("host_load_1m", "gpu_processes")


def host_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def cpu_model(cpuinfo: str | None = None) -> str | None:
    """The first "model name" of ``cpuinfo`` (default: /proc/cpuinfo), else platform.processor(), else None."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    match = re.search(r"^model name\s*:\s*(.+?)\s*$", cpuinfo, re.MULTILINE)
    return match.group(1) if match else (platform.processor() or None)


def host_load_1m() -> float | None:
    """The 1-minute load average (os.getloadavg()[0]), rounded to 0.01; None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def gpu_processes(text: str | None) -> int | None:
    """The number of processes in ``nvidia-smi --query-compute-apps=pid --format=csv,noheader`` output."""
    if text is None:
        return None
    return sum(1 for line in text.splitlines() if line.strip())


def _nvidia_smi(*args: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def link_from_topology(text: str | None) -> str | None:
    """"nvlink" | "pcie" | None from the matrix ``nvidia-smi topo -m`` prints (GPU rows only)."""
    if not text:
        return None
    rows = [line.split() for line in text.splitlines() if re.match(r"^\s*GPU\d+\s", line)]
    if len(rows) < 2:
        return None
    cells = [cell for row in rows for cell in row[1:len(rows) + 1] if cell != "X"]
    if any(re.fullmatch(r"NV\d+", cell) for cell in cells):
        return "nvlink"
    return "pcie" if any(cell in ("PIX", "PXB", "PHB", "NODE", "SYS") for cell in cells) else None


def host_link() -> tuple[int | None, int | None]:
    """(PCIe generation, lanes) of the first GPU's current host link, or (None, None)."""
    text = _nvidia_smi("--query-gpu=pcie.link.gen.current,pcie.link.width.current", "--format=csv,noheader")
    try:
        gen, width = (int(x) for x in text.splitlines()[0].split(","))
    except (AttributeError, IndexError, ValueError):
        return None, None
    return gen, width


def gpu_limits(text: str | None) -> dict[str, float | None]:
    """GPU_LIMITS from the first line of ``nvidia-smi --query-gpu=clocks.max.sm,power.limit,power.max_limit
    --format=csv,noheader,nounits`` output; a field nvidia-smi cannot read ("[N/A]") or no output: None."""
    fields = (text or "").splitlines()[0].split(",") if (text or "").strip() else []

    def number(i: int) -> float | None:
        try:
            return float(fields[i])
        except (IndexError, ValueError):
            return None

    return {key: number(i) for i, key in enumerate(GPU_LIMITS)}


def host_facts() -> dict[str, Any]:
    gen, width = host_link()
    limits = gpu_limits(_nvidia_smi("--query-gpu=clocks.max.sm,power.limit,power.max_limit",
                                    "--format=csv,noheader,nounits"))
    return {"host_cpus": host_cpus(), "gpu_link": link_from_topology(_nvidia_smi("topo", "-m")),
            "pcie_gen": gen, "pcie_width": width, "cpu_model": cpu_model(), **limits}


def host_load() -> dict[str, Any]:
    """How busy the host and its GPUs are now: host_load_1m and gpu_processes (see the module docstring)."""
    return {"host_load_1m": host_load_1m(),
            "gpu_processes": gpu_processes(_nvidia_smi("--query-compute-apps=pid", "--format=csv,noheader"))}
