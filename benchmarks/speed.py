"""Speed of the estimate path: end-to-end CLI vs importing torch+transformers, and the
pure estimate function in plans per second.

Run: python benchmarks/speed.py [--repeats 5]
Prints a Markdown table (paste into docs/benchmarks.md with the machine and versions).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str], repeats: int) -> float:
    """Median wall seconds of a command over repeats (after one warm-up run)."""
    subprocess.run(cmd, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plans_per_second(seconds: float = 2.0) -> tuple[float, int]:
    from memplan.spec.flags import plan_from_flags
    from memplan.estimate.peak import estimate
    from memplan.spec.loading import load_profile

    profile = load_profile("sa2va-4b")
    plans = [plan_from_flags(None, gpus=g, zero=z, res=r) for g in (1, 2, 4, 8) for z in (0, 1, 2, 3) for r in (512, 768, 1024)]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for plan in plans:
            estimate(profile, plan)
        count += len(plans)
    return count / (time.perf_counter() - start), len(plans)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    memplan = shutil.which("memplan") or "memplan"
    cli = wall([memplan, "estimate", "--gpus", "4", "--vram", "24", "--res", "512", "--format", "json"], args.repeats)
    heavy = wall([sys.executable, "-c", "import torch, transformers"], args.repeats)
    rate, distinct = plans_per_second()
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    print("| measurement | value |\n|---|---:|")
    print(f"| `memplan estimate --gpus 4 --vram 24 --res 512 --format json` (median of {args.repeats}) | {cli * 1000:.0f} ms |")
    print(f"| `python -c \"import torch, transformers\"` (median of {args.repeats}) | {heavy * 1000:.0f} ms |")
    print(f"| ratio (import / estimate) | {heavy / cli:.1f}x |")
    print(f"| `estimate()` on pre-built plans ({distinct} distinct) | {rate:,.0f} plans/s |")


if __name__ == "__main__":
    main()
