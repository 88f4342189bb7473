"""TRL's SFTConfig defaults that differ from transformers' TrainingArguments, by TRL version.

A script that builds ``SFTConfig(...)`` without a keyword gets TRL's default for it, and TRL changed
three that move memory (trl/trainer/sft_config.py, later trl/trainer/base_config.py):
- ``bf16``: True when ``fp16`` is not set, since TRL 0.19.0 (#3515, #3598);
- ``gradient_checkpointing``: True since TRL 0.22.0 (#3510);
- ``loss_type``: ``"chunked_nll"`` since TRL 1.7.0 (#5846; the lm_head and the cross-entropy run in chunks
  of tokens on the non-ignored positions, so the full-vocabulary logits are never held), ``"nll"`` with
  ``use_liger_kernel=True``.
The version is the installed TRL's (importlib.metadata: nothing imported), else the newest behaviour,
said so in the finding.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from memplan.integrations.script_scan.reader import Finding, ScriptTree, make_finding

NEWEST = (1, 7, 0)  # the newest default change known here (loss_type chunked_nll)
BF16_SINCE, CHECKPOINTING_SINCE, CHUNKED_SINCE = (0, 19, 0), (0, 22, 0), (1, 7, 0)


def _parse(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3]) or NEWEST


def trl_version() -> tuple[tuple[int, ...], str]:
    """(version, how it was found): the installed TRL's, else the newest defaults known here."""
    from memplan.estimate.stack import installed_version

    version = installed_version("trl")
    if version is None:
        return NEWEST, "TRL not installed: assumed TRL >= 1.7 defaults"
    return _parse(version), f"TRL {version} (installed)"


def sft_configs(script: ScriptTree) -> list[ast.Call]:
    """SFTConfig(...) calls whose keywords can be read (no **kwargs)."""
    return [call for call in script.calls_named("SFTConfig") if not script.has_splat(call)]


def _missing(script: ScriptTree, call: ast.Call, *keywords: str) -> bool:
    return not any(k in script.keywords(call) for k in keywords)


def checkpointing_default(script: ScriptTree) -> list[Finding]:
    """gradient_checkpointing left to TRL: on since 0.22 (Trainer then checkpoints the whole model)."""
    version, how = trl_version()
    out = []
    for call in sft_configs(script):
        if not _missing(script, call, "gradient_checkpointing"):
            continue
        on = version >= CHECKPOINTING_SINCE
        settings: dict[str, Any] = {"components.llm.checkpointing": on}
        if on:
            settings["stack.checkpoint_scope"] = "model"
        out.append(make_finding(script, name="gradient_checkpointing (TRL default)", value="on" if on else "off",
                                node=call, settings=settings,
                                note=f"SFTConfig without gradient_checkpointing=: TRL's default since 0.22 is True; {how}"))
    return out


def bf16_default(script: ScriptTree) -> list[Finding]:
    """bf16 left to TRL: True when fp16 is not set, since 0.19."""
    version, how = trl_version()
    return [make_finding(script, name="bf16 (TRL default)", value=str(version >= BF16_SINCE), node=call,
                         note=f"SFTConfig without bf16=/fp16=: TRL's default since 0.19 is bf16=True; {how}")
            for call in sft_configs(script) if _missing(script, call, "bf16", "fp16")]


def loss_default(script: ScriptTree) -> list[Finding]:
    """loss_type: chunked_nll (TRL's default since 1.7, unless use_liger_kernel) never holds the full logits."""
    version, how = trl_version()
    out = []
    for call in sft_configs(script):
        keywords = script.keywords(call)
        if "loss_type" in keywords:
            value = script.value(keywords["loss_type"])[0]
            if value == "chunked_nll":
                out.append(make_finding(script, name="loss_type", value=value, node=keywords["loss_type"],
                                        settings={"stack.loss": "chunked"}, note="TRL's chunked cross-entropy"))
            elif isinstance(value, str):
                out.append(make_finding(script, name="loss_type", value=value, node=keywords["loss_type"],
                                        settings={"stack.loss": "full_vocab"}, note="the logits over the whole vocabulary"))
            continue
        if "use_liger_kernel" in keywords or version < CHUNKED_SINCE:
            continue  # Liger's own rule, or the full-vocabulary nll of older TRL
        out.append(make_finding(script, name="loss_type (TRL default)", value="chunked_nll", node=call,
                                settings={"stack.loss": "chunked"},
                                note=f"SFTConfig without loss_type=: TRL's default since 1.7 is chunked_nll; {how}"))
    return out
