"""One adapter per architecture family, each holding both directions (HF config <-> memplan spec):

- ``llm``: Qwen2/2.5, Qwen3, Llama, InternLM2 (as Llama);
- ``internvit``: InternViT-300M/6B, and the InternVL models around it (internvl_chat, internvl);
- ``qwen_vit``: the Qwen2.5-VL / Qwen3-VL towers and their mergers (and the Qwen-VL models);
- ``sam2``: SAM2 image and video models.

``RECIPES`` maps a config's ``model_type`` to the family function that reads it (import); the probe
builds its modules with each family's ``build`` / ``to_config`` (spec -> transformers config).
"""

from __future__ import annotations

from typing import Any, Callable

from memplan.integrations.huggingface.base import Recipe
from memplan.integrations.huggingface.families import internvit, llm, qwen_vit, sam2

RECIPES: dict[str, Callable[[dict[str, Any], str], Recipe]] = {
    "qwen2": llm.causal_lm, "qwen3": llm.causal_lm, "llama": llm.causal_lm, "internlm2": llm.causal_lm,
    "intern_vit_6b": internvit.intern_vit, "internvl_chat": internvit.internvl_chat, "internvl": internvit.internvl_hf,
    "qwen2_5_vl": qwen_vit.qwen_vl, "qwen3_vl": qwen_vit.qwen_vl, "sam2": sam2.sam2, "sam2_video": sam2.sam2,
}

__all__ = ["RECIPES", "internvit", "llm", "qwen_vit", "sam2"]
