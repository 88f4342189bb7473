"""``--emit-fsdp FILE``: write an FSDP2 plan's accelerate config and the plan beside it; print the launch line."""

from __future__ import annotations

from pathlib import Path

import typer

from memplan.integrations import plan_path_for
from memplan.spec.loading import InputError
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile


def check_targets(target: Path, *, force: bool) -> None:
    """Refuse (InputError) to overwrite the config or its plan without --force."""
    for path in (target, plan_path_for(target)):
        if path.exists() and not force:
            raise InputError(f"--emit-fsdp={target}: {path} exists (pass --force to overwrite it)")


def emit_fsdp(profile: Profile, plan: Plan, *, model: str, target: Path, script: str, force: bool = False) -> Plan:
    """Write ``target`` (accelerate YAML) and ``target.plan.yaml`` (the plan as accelerate runs it);
    refuse to overwrite either without ``force``. Returns the plan written."""
    import yaml

    from memplan.integrations.accelerate_fsdp import accelerate_config, accelerate_plan, check_fsdp_plan, launch_line

    check_fsdp_plan(plan, plan.name)
    plan_file = plan_path_for(target)
    check_targets(target, force=force)
    written = accelerate_plan(plan)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"# accelerate config (FSDP2) for memplan plan {plan.name}, model {model}\n"
                          + yaml.safe_dump(accelerate_config(profile, written), sort_keys=False), encoding="utf-8")
        data = written.model_copy(update={"model": model}).model_dump(mode="json")
        plan_file.write_text(f"# memplan plan {plan.name} as accelerate runs it ({target.name}): reduce_dtype "
                             "and embeddings_unit follow accelerate\n" + yaml.safe_dump(data, sort_keys=False),
                             encoding="utf-8")
    except OSError as error:
        raise InputError(f"--emit-fsdp={target}: cannot write ({error.strerror or error})") from None
    typer.echo(f"wrote {target} (accelerate FSDP2 config of {plan.name}) and {plan_file}", err=True)
    typer.echo(launch_line(written, str(target), script, args=f"--plan {plan_file}"))
    return written
