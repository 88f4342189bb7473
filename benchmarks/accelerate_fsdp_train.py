"""Train a memplan plan through ``accelerate launch`` with the FSDP2 config ``memplan estimate --emit-fsdp`` wrote.

    memplan estimate --engine fsdp2 -m MODEL ... --emit-fsdp fsdp.yaml
    accelerate launch --config_file fsdp.yaml benchmarks/accelerate_fsdp_train.py --plan fsdp.plan.yaml \
        --vram-cap 24 --out $OUT/accelerate.jsonl

The model is memplan's probe model (random weights, memplan.probe.build / apply: freezing, LoRA,
checkpointing per component); accelerate shards it (accelerate/utils/fsdp_utils.py,
fsdp2_prepare_model) from the config's FSDP_* settings. Per phase (forward, backward, optimizer
step; every step) the script reads torch.cuda.max_memory_allocated / max_memory_reserved and
total - free, under an emulated card of --vram-cap GiB (memplan.probe.run.DeviceCap), and writes one
JSON line with the measurement beside memplan's estimate of the same plan.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="the plan --emit-fsdp wrote beside the config")
    parser.add_argument("--model", default=None, help="profile (default: the plan's model)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--vram-cap", type=float, default=None, help="emulate a card of this many GiB")
    parser.add_argument("--out", type=Path, required=True, help="JSONL file the result is appended to")
    return parser.parse_args(argv)


def reading(torch, device) -> dict[str, int]:
    free, total = torch.cuda.mem_get_info(device)
    return {"max_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
            "max_reserved_bytes": int(torch.cuda.max_memory_reserved(device)), "device_used_bytes": int(total - free)}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch
    from accelerate import Accelerator

    from memplan.estimate.peak import estimate
    from memplan.probe.apply import apply_plan
    from memplan.probe.build import DTYPES, build_model, make_batch
    from memplan.probe.cap import DeviceCap
    from memplan.probe.engines import make_optimizer
    from memplan.probe.run import is_oom
    from memplan.spec.loading import load_plan, load_profile
    from memplan.spec.units import gib_to_bytes

    plan = load_plan(args.plan)
    profile = load_profile(args.model or plan.model)
    accelerator = Accelerator()
    device = accelerator.device
    cap = DeviceCap(device, gib_to_bytes(args.vram_cap) if args.vram_cap else None)
    phases: dict[str, dict[str, int]] = {}
    status, error = "ok", None
    started = time.time()

    def measured(name: str, function):
        cap.apply()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        value = function()
        torch.cuda.synchronize(device)
        now = reading(torch, device)
        phases[name] = {k: max(v, phases.get(name, {}).get(k, 0)) for k, v in now.items()}
        return value

    try:
        def init():
            model = apply_plan(build_model(profile, plan), plan)
            optimizer = make_optimizer(plan, [p for p in model.parameters() if p.requires_grad])
            return accelerator.prepare(model, optimizer)

        model, optimizer = measured("init", init)
        batch = make_batch(accelerator.unwrap_model(model), profile, device, DTYPES[plan.precision.compute])
        for _ in range(args.steps):
            loss = measured("forward", lambda: model(batch))
            measured("backward", lambda: accelerator.backward(loss))

            def step():
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            measured("optimizer_step", step)
            del loss
    except Exception as failure:  # noqa: BLE001 - an OOM is a result; anything else is recorded
        status = "oom" if is_oom(failure) else "error"
        error = " ".join(str(failure).split())[:300]
    finally:
        cap.lift()
    result = estimate(profile, plan)
    peak = max((p["max_allocated_bytes"] for p in phases.values()), default=0)
    record = {
        "kind": "accelerate-fsdp2", "model": profile.name, "plan": plan.model_dump(mode="json"), "status": status,
        "error": error, "rank": accelerator.process_index, "world_size": accelerator.num_processes,
        "vram_cap_bytes": gib_to_bytes(args.vram_cap) if args.vram_cap else None, "phases": phases,
        "peak_allocated_bytes": peak, "estimate": {"peak_allocated_bytes": result.peak_allocated_bytes,
                                                   "needed_bytes": result.needed_bytes,
                                                   "verdict": result.verdict.value, "phases": result.to_dict()["phases"]},
        "seconds": round(time.time() - started, 1), "command": " ".join(sys.argv),
        "versions": {"torch": torch.__version__, "accelerate": __import__("accelerate").__version__},
    }
    if accelerator.is_main_process:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"{status}: peak allocated {peak / 2**30:.2f} GiB, estimate "
              f"{result.peak_allocated_bytes / 2**30:.2f} GiB ({result.verdict.value})", flush=True)
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
