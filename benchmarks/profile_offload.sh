#!/usr/bin/env bash
# Where the optimizer-offload plans' step time goes (docs/benchmarks.md, "Where offload time goes"): the last of
# 4 steps of three Sa2VA-1B plans under torch.profiler (benchmarks/profile_step.py), on one GPU.
#   z3-mb2          ZeRO-3, micro-batch 2                      (set d measured it without phase times)
#   z3-offload-mb2  ZeRO-3 + optimizer offload, micro-batch 2  (set g: 1.53x the prediction)
#   z1-offload      ZeRO-1 + optimizer offload                 (set g: the backward 35% under after the refit)
# Usage (device): OUT=$OUT bash benchmarks/profile_offload.sh
set -u
OUT=${OUT:-/tmp/profile-offload}
mkdir -p "$OUT/profile"
run() {
  local tag=$1; shift
  echo "=== $tag: $*"
  PROFILE_OUT=$OUT/profile timeout 260 python3 benchmarks/profile_step.py --tag "$tag" probe --model sa2va-1b \
    --gpus 1 --steps 4 --timeout 200 --out "$OUT/profile-records.jsonl" "$@" > "$OUT/profile/$tag.log" 2>&1
  echo "exit $?"; tail -4 "$OUT/profile/$tag.log"
}
run z3-offload-mb2 --zero 3 --offload optimizer --micro-batch 2
run z3-mb2 --zero 3 --micro-batch 2
run z1-offload --zero 1 --offload optimizer
for tag in z3-offload-mb2 z3-mb2 z1-offload; do echo "== $tag phases"; cat "$OUT/profile/$tag-phases.json" 2>/dev/null; done
