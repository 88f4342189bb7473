#!/usr/bin/env python3
"""`memplan probe` with DeepSpeed ZeRO-3's coordinator instrumented (docs/stacks.md, 14): after every fetch_sub_module and
release_sub_module, one JSON line (step, event, F/B, module name, trace complete, gathered non-persistent numel,
persistent numel) to $TRACE_OUT. Usage: DS_ACCELERATOR=cpu python benchmarks/zero3_trace.py probe ... --device cpu"""
import os, sys, json
os.environ.setdefault("DS_ACCELERATOR", "cpu")
import deepspeed
from deepspeed.runtime.zero import parameter_offload as po
from deepspeed.runtime.zero import partitioned_param_coordinator as ppc
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

STATE = {"module": None, "names": {}, "log": [], "step": 0}
orig_init = po.DeepSpeedZeRoOffload.__init__
def init(self, module, *a, **k):
    STATE["module"] = module
    STATE["names"] = {id(m): n for n, m in module.named_modules()}
    orig_init(self, module, *a, **k)
po.DeepSpeedZeRoOffload.__init__ = init

def gathered():
    tot = per = 0
    for p in STATE["module"].parameters():
        if p.ds_status != ZeroParamStatus.NOT_AVAILABLE:
            if p.ds_persist: per += p.ds_numel
            else: tot += p.ds_numel
    return tot, per

def wrap(name):
    orig = getattr(ppc.PartitionedParameterCoordinator, name)
    def f(self, sub, *a, **k):
        out = orig(self, sub, *a, **k)
        fwd = k.get("forward", a[0] if a else None)
        g, per = gathered()
        STATE["log"].append((STATE["step"], name[:5], "F" if fwd else "B", STATE["names"].get(id(sub), "?"),
                             self.is_complete_trace(), g, per))
        return out
    setattr(ppc.PartitionedParameterCoordinator, name, f)
wrap("fetch_sub_module"); wrap("release_sub_module")
orig_reset = ppc.PartitionedParameterCoordinator.reset_step
def reset(self):
    STATE["step"] += 1
    STATE["log"].append((STATE["step"], "reset", "", "", self.is_complete_trace(), *gathered()) if STATE["module"] is not None else ())
    return orig_reset(self)
ppc.PartitionedParameterCoordinator.reset_step = reset

import atexit
def dump():
    with open(os.environ.get("TRACE_OUT", "/tmp/z3b/trace.jsonl"), "w") as fh:
        for row in STATE["log"]:
            fh.write(json.dumps(row) + "\n")
atexit.register(dump)

from memplan.cli.main import app
sys.argv = ["memplan"] + sys.argv[1:]
app()
