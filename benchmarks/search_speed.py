"""Speed of `memplan search`: candidates decided per second on the seed's case and others.

Run: python benchmarks/search_speed.py [--repeats 3]
Prints a Markdown table (machine, candidates, full memory estimates, median seconds).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = (  # (label, base plan, model, GPUs, VRAM GiB, host RAM GiB)
    ("seed: sa2va-8b, 4 x 24 GiB", ROOT / "memplan" / "plans" / "seed" / "baseline.yaml", None, 4, 24.0, 128.0),
    ("sa2va-4b, 4 x 24 GiB", None, "sa2va-4b", 4, 24.0, 128.0),
    ("sa2va-4b, 8 x 80 GiB (most fit)", None, "sa2va-4b", 8, 80.0, 512.0),
    ("sa2va-26b, 1 x 8 GiB (none fits)", None, "sa2va-26b", 1, 8.0, 64.0),
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from memplan.spec.flags import plan_from_flags, resolve_profile
    from memplan.estimate.peak import estimate
    from memplan.planning.search import search

    base0 = plan_from_flags(None)
    profile0 = resolve_profile("sa2va-4b")
    start = time.perf_counter()
    for _ in range(200):
        estimate(profile0, base0)
    per_estimate = (time.perf_counter() - start) / 200

    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}; "
          f"estimate(): {per_estimate * 1e6:.0f} us")
    print("| case | candidates | full estimates | front | median s (of {}) |\n|---|---:|---:|---:|---:|".format(args.repeats))
    for label, plan_file, model, gpus, vram, host in CASES:
        base = plan_from_flags(str(plan_file) if plan_file else None)
        profile = resolve_profile(model, base)
        times, result = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = search(profile, base, num_gpus=gpus, vram_gib=vram, host_ram_gib=host)
            times.append(time.perf_counter() - started)
        stats = result.stats
        print(f"| {label} | {stats.candidates:,} | {stats.estimated:,} | {len(result.front)} | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
