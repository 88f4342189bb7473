"""Profile -> a real ``nn.Module`` with random weights, built from transformers config classes.

Nothing is downloaded: every component comes from its transformers config class, made from the spec by
its family adapter in memplan.integrations.huggingface.families (llm: Qwen2Config, Qwen3Config,
LlamaConfig; internvit: InternVLVisionConfig; qwen_vit: Qwen2_5_VLVisionConfig, Qwen3VLVisionConfig;
sam2: Sam2Config; the same adapters read HF configs for ``memplan profile import``), plus two small
modules written here (the InternVL ``mlp1`` projector with its pixel shuffle and the Sa2VA
seg head). ``Sa2VAProbeModel.forward(batch)`` wires them as Sa2VA does and returns a scalar loss.

Known differences from the released checkpoints, all small in memory:
- SAM2: ``Sam2Model`` has no memory attention / memory encoder (``Sam2Spec.memory_params``, 7.5M
  parameters that Sa2VA loads but never runs for images); they are not added.
- Qwen-VL vision towers carry their merger inside; it is counted as the ``projector`` component.
  Qwen3-VL deepstack features are added to the image tokens (Qwen3-VL adds them to the first LLM
  layers' hidden states at the image positions: same tensors, one addition per merger).
- InternLM2 is built as Llama (same shapes; InternLM2 fuses wqkv, which changes nothing in memory).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memplan.integrations.huggingface.families import internvit, qwen_vit
from memplan.integrations.huggingface.families import llm as llm_family
from memplan.integrations.huggingface.families import sam2 as sam2_family
from memplan.probe.shapes import ProbeBuildError, Shapes, input_shapes
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile, ProjectorSpec, SegHeadSpec, VisionSpec
from memplan.spec.vocabulary import Component

__all__ = ["ProbeBuildError", "Shapes", "input_shapes", "Sa2VAProbeModel", "build_model", "make_batch"]

ATTENTION_IMPLEMENTATIONS = {"eager": "eager", "sdpa": "sdpa", "flash": "flash_attention_2"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
IGNORE_INDEX = -100  # transformers' ForCausalLMLoss ignore_index


def attn_implementation(plan: Plan) -> str:
    """transformers' attn_implementation for plan.attention; flash needs the flash_attn package."""
    name = ATTENTION_IMPLEMENTATIONS[plan.attention]
    if name == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise ProbeBuildError("attention=flash: flash_attn is not installed here (use sdpa or eager)")
    return name


# --------------------------------------------------------------------------- small modules


def pixel_shuffle(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """InternVL's pixel shuffle (ps_version v2): (n, w, h, c) -> (n, w*r, h*r, c/r^2)."""
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * ratio), int(c / ratio))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, int(h * ratio), int(w * ratio), int(c / (ratio * ratio)))
    return x.permute(0, 2, 1, 3).contiguous()


def _norm(kind: str, dim: int) -> nn.Module:
    return nn.LayerNorm(dim) if kind == "layernorm" else nn.RMSNorm(dim)


class Projector(nn.Module):
    """InternVL mlp1: pixel shuffle, norm(4C) -> Linear(4C, hidden) -> GELU -> Linear(hidden, out).

    With ``norm_after_merge=False`` the norm runs on C before the merge (Qwen2.5-VL merger order);
    ``deepstack_mergers`` adds copies (norm on 4C) whose outputs are summed in.
    """

    def __init__(self, spec: ProjectorSpec) -> None:
        super().__init__()
        self.ratio = 1 / math.isqrt(spec.merge_factor)
        if math.isqrt(spec.merge_factor) ** 2 != spec.merge_factor:
            raise ProbeBuildError(f"projector.merge_factor={spec.merge_factor} is not a square (2x2 -> 4)")
        self.norm_after_merge = spec.norm_after_merge
        self.norm = _norm(spec.norm, spec.merged_size if spec.norm_after_merge else spec.input_size)
        self.linear_1 = nn.Linear(spec.merged_size, spec.hidden_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(spec.hidden_size, spec.output_size)
        self.deepstack = nn.ModuleList(
            nn.Sequential(
                _norm(spec.norm, spec.merged_size),
                nn.Linear(spec.merged_size, spec.hidden_size),
                nn.GELU(),
                nn.Linear(spec.hidden_size, spec.output_size),
            )
            for _ in range(spec.deepstack_mergers)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(images, patches, C) -> (images, patches * ratio^2, out)."""
        n, patches, _ = features.shape
        side = math.isqrt(patches)
        if not self.norm_after_merge:
            features = self.norm(features)
        merged = pixel_shuffle(features.reshape(n, side, side, -1), self.ratio).reshape(n, -1, self.linear_1.in_features)
        x = self.norm(merged) if self.norm_after_merge else merged
        out = self.linear_2(self.act(self.linear_1(x)))
        for merger in self.deepstack:
            out = out + merger(merged)
        return out


class SegHead(nn.Module):
    """Sa2VA text_hidden_fcs: Linear(h, h) -> ReLU -> Linear(h, out)."""

    def __init__(self, spec: SegHeadSpec) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(spec.input_size, spec.input_size)
        self.act = nn.ReLU()
        self.linear_2 = nn.Linear(spec.input_size, spec.output_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(hidden)))


# --------------------------------------------------------------------------- the probe model


class Sa2VAProbeModel(nn.Module):
    """Any sub-combination of vision tower, projector, LLM, SAM2 and seg head, wired as Sa2VA.

    forward(batch) -> scalar loss: LM loss over the full vocabulary (image tokens replace the first
    images*tokens_per_image embeddings) plus a BCE mask loss of the SAM2 decoder prompted with the seg
    head's projection of the last hidden state at the [SEG] positions. Parts that are absent drop out.
    """

    def __init__(self, profile: Profile, plan: Plan, shapes: Shapes, parts: dict[str, nn.Module | None],
                 notes: list[str]) -> None:
        super().__init__()
        self.shapes = shapes
        self.notes = notes
        self.vision = parts.get("vision")
        self.vision_kind = _vision_kind(self.vision)
        self.merger_is_projector = self.vision_kind == "qwen" and profile.projector is not None
        self.projector = parts.get("projector")
        self.llm = parts.get("llm")
        self.sam2 = parts.get("sam2")
        self.seg_head = parts.get("seg_head")
        self.sam2_encoder_trains = plan.trains(Component.SAM2_ENCODER)
        self.output_hidden_states = plan.inputs.output_hidden_states
        self._final_hidden: torch.Tensor | None = None
        if self.llm is not None:
            self.llm.get_decoder().norm.register_forward_hook(self._capture_final_hidden)

    def _capture_final_hidden(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self._final_hidden = output

    def component_of(self, name: str) -> Component:
        """The memplan Component a parameter (by qualified name) belongs to."""
        top = name.split(".", 1)[0]
        if top == "vision":
            merger = ".merger." in name or ".deepstack_merger_list." in name
            return Component.PROJECTOR if merger and self.merger_is_projector else Component.VISION
        if top == "sam2":
            encoder = name.startswith(("sam2.vision_encoder.", "sam2.no_memory_embedding"))
            return Component.SAM2_ENCODER if encoder else Component.SAM2_DECODER
        return Component(top)

    # ---- branches

    def image_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(micro_batch, images * tokens_per_image, width) from the vision tower (+ projector)."""
        b = self.shapes.micro_batch
        if self.vision_kind == "qwen":
            out = self.vision(batch["pixel_values"], grid_thw=batch["grid_thw"])
            tokens = out.pooler_output
            for extra in getattr(out, "deepstack_features", None) or ():
                tokens = tokens + extra
            return tokens.reshape(b, -1, tokens.shape[-1])
        features = self.vision(pixel_values=batch["pixel_values"]).last_hidden_state
        features = features[:, 1:, :]  # drop CLS (InternVLVisionEmbeddings always prepends it)
        if self.projector is not None:
            features = self.projector(features)
        return features.reshape(b, -1, features.shape[-1])

    def language(self, batch: dict[str, torch.Tensor], image_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """LM loss and the last hidden state at the [SEG] positions (micro_batch, objects, h)."""
        input_ids, labels = batch["input_ids"], batch["labels"]
        embeds = self.llm.get_input_embeddings()(input_ids)
        if image_tokens is not None:
            count = image_tokens.shape[1]
            embeds = torch.cat([image_tokens.to(embeds.dtype), embeds[:, count:]], dim=1)
        out = self.llm(inputs_embeds=embeds, labels=labels, output_hidden_states=self.output_hidden_states,
                       use_cache=False)
        hidden, self._final_hidden = self._final_hidden, None
        objects = self.shapes.objects
        seg = hidden[:, -1 - objects:-1, :] if objects else hidden[:, :0, :]
        return out.loss, seg

    def sam2_embeddings(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """SAM2 image embedding (n, 256, r/16, r/16) and the decoder's high-res features (conv_s0/s1)."""
        if self.sam2_encoder_trains:
            encoded = self.sam2.vision_encoder(pixels)
        else:
            with torch.no_grad():
                encoded = self.sam2.vision_encoder(pixels)
        maps = list(encoded.fpn_hidden_states)
        decoder = self.sam2.mask_decoder
        high_res = [decoder.conv_s0(maps[0]), decoder.conv_s1(maps[1])]
        embedding = maps[2] + self.sam2.no_memory_embedding.reshape(1, -1, 1, 1)
        return embedding, high_res

    def random_prompts(self, count: int, device: torch.device) -> torch.Tensor:
        """Sparse prompts from random points through the prompt encoder (SAM2 without an LLM)."""
        side = self.shapes.sam2_resolution
        points = torch.rand(count, max(self.shapes.objects, 1), 1, 2, device=device) * side
        labels = torch.ones(points.shape[:3], dtype=torch.int32, device=device)
        sparse, _ = self.sam2.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None,
                                             input_masks=None)
        return sparse

    def mask_loss(self, batch: dict[str, torch.Tensor], prompts: torch.Tensor | None) -> torch.Tensor:
        """BCE of the SAM2 decoder's low-res masks (n, objects, 1, r/4, r/4) against random targets."""
        pixels = batch["sam2_pixel_values"]
        embedding, high_res = self.sam2_embeddings(pixels)
        n = pixels.shape[0]
        if prompts is None:
            sparse = self.random_prompts(n, pixels.device)
        else:
            per_sample = n // self.shapes.micro_batch
            sparse = prompts.repeat_interleave(per_sample, dim=0).unsqueeze(2)  # (n, objects, 1, 256)
        positions = self.sam2.get_image_wide_positional_embeddings().repeat(n, 1, 1, 1)
        dense = self.sam2.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            n, -1, embedding.shape[-2], embedding.shape[-1])
        masks, _iou, _tokens, _object_scores = self.sam2.mask_decoder(
            image_embeddings=embedding,
            image_positional_embeddings=positions.to(embedding.dtype),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            high_resolution_features=high_res,
        )
        targets = batch["mask_targets"][:, : masks.shape[1]].to(torch.float32)
        return F.binary_cross_entropy_with_logits(masks.float(), targets.expand_as(masks))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One Sa2VA training forward on ``batch`` (see make_batch); returns the summed loss."""
        image_tokens = self.image_tokens(batch) if self.vision is not None and self.shapes.images else None
        loss = None
        prompts = None
        if self.llm is not None:
            loss, seg_hidden = self.language(batch, image_tokens)
            if self.seg_head is not None and self.shapes.objects:
                prompts = self.seg_head(seg_hidden)
        elif image_tokens is not None:
            loss = image_tokens.float().pow(2).mean()
        if self.llm is None and self.seg_head is not None:
            weight = self.seg_head.linear_1.weight
            hidden = torch.randn(self.shapes.micro_batch, max(self.shapes.objects, 1),
                                 self.seg_head.linear_1.in_features, device=weight.device, dtype=weight.dtype)
            prompts = self.seg_head(hidden)
            if self.sam2 is None:
                loss = prompts.float().pow(2).mean()
        if self.sam2 is not None and (self.shapes.objects or self.llm is None):
            mask = self.mask_loss(batch, prompts)
            loss = mask if loss is None else loss + mask
        return loss


# --------------------------------------------------------------------------- building


def build_vision(profile: Profile, *, attn: str, notes: list[str]) -> nn.Module:
    """The tower of the profile's architecture family (internvit, qwen_vit); a Qwen-VL tower that
    does not build is recorded and replaced by InternVLVisionModel with the same widths."""
    spec = profile.vision
    if spec.architecture == "internvit":
        return internvit.build(spec, attn=attn)
    try:
        return qwen_vit.build(spec, profile.projector, attn=attn)
    except Exception as error:  # noqa: BLE001 - recorded, then the InternVL fallback is built
        notes.append(f"vision {spec.architecture} did not build ({type(error).__name__}: {error}); "
                     "built InternVLVisionModel with the same widths")
        return internvit.build(spec, attn=attn)


def build_parts(profile: Profile, plan: Plan, *, notes: list[str]) -> dict[str, nn.Module | None]:
    """Instantiate every component the profile has (on the current default device)."""
    attn = attn_implementation(plan)
    qwen_vision = profile.vision is not None and profile.vision.architecture != "internvit"
    parts: dict[str, nn.Module | None] = {}
    if profile.vision:
        parts["vision"] = build_vision(profile, attn=attn, notes=notes)
        qwen_vision = qwen_vision and not isinstance(parts["vision"], internvit.model_class())
    if profile.projector and not qwen_vision:
        parts["projector"] = Projector(profile.projector)
    if profile.llm:
        parts["llm"] = llm_family.build(profile.llm, attn=attn, max_positions=plan.inputs.text_tokens)
    if profile.sam2:
        parts["sam2"] = sam2_family.build(profile.sam2, resolution=plan.inputs.sam2_resolution, attn=attn)
        notes.append("SAM2 memory attention/encoder not built (unused for images): "
                     f"{profile.sam2.memory_params} parameters of the profile absent")
    if profile.seg_head:
        parts["seg_head"] = SegHead(profile.seg_head)
    return parts


def _vision_kind(vision: nn.Module | None) -> str | None:
    """'internvl' or 'qwen' (a Qwen-VL tower, which takes flattened patches and grid_thw)."""
    if vision is None:
        return None
    return "internvl" if isinstance(vision, internvit.model_class()) else "qwen"


def build_model(profile: Profile, plan: Plan, *, dtype: torch.dtype | None = None) -> Sa2VAProbeModel:
    """The probe model for ``profile`` with ``plan``'s input shapes, in ``dtype`` (default: compute dtype).

    Built on the current default device (CPU unless the caller enters ``torch.device(...)`` or
    ``deepspeed.zero.Init``).
    """
    shapes = input_shapes(profile, plan)
    notes: list[str] = []
    parts = build_parts(profile, plan, notes=notes)
    model = Sa2VAProbeModel(profile, plan, shapes, parts, notes)
    return model.to(dtype or DTYPES[plan.precision.compute])


# --------------------------------------------------------------------------- inputs


def make_batch(model: Sa2VAProbeModel, profile: Profile, device: torch.device | str,
               dtype: torch.dtype, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Synthetic inputs with the plan's shapes: pixels, token ids, labels, SAM2 pixels, mask targets."""
    shapes = model.shapes
    generator = torch.Generator().manual_seed(seed)
    b = shapes.micro_batch
    batch: dict[str, torch.Tensor] = {}
    if profile.vision and shapes.images:
        batch.update(_pixel_inputs(model, profile.vision, b * shapes.images, generator, dtype))
    if profile.llm:
        vocab = profile.llm.vocab_size
        ids = torch.randint(0, vocab, (b, shapes.text_tokens), generator=generator)
        labels = ids.clone()
        labels[:, : shapes.images * shapes.tokens_per_image] = IGNORE_INDEX
        batch.update(input_ids=ids, labels=labels)
    if profile.sam2:
        n = b * shapes.sam2_images
        side = shapes.sam2_resolution
        batch["sam2_pixel_values"] = torch.randn(n, 3, side, side, generator=generator).to(dtype)
        objects = max(shapes.objects, 1)
        batch["mask_targets"] = torch.rand(n, objects, 1, side // 4, side // 4, generator=generator) > 0.5
    return {key: value.to(device) for key, value in batch.items()}


def _pixel_inputs(model: Sa2VAProbeModel, spec: VisionSpec, images: int, generator: torch.Generator,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    side = spec.image_size
    if model.vision_kind == "qwen":
        grid = side // spec.patch_size
        width = 3 * spec.temporal_patch_size * spec.patch_size**2
        pixels = torch.randn(images * grid * grid, width, generator=generator).to(dtype)
        grid_thw = torch.tensor([[1, grid, grid]] * images, dtype=torch.long)
        return {"pixel_values": pixels, "grid_thw": grid_thw}
    return {"pixel_values": torch.randn(images, 3, side, side, generator=generator).to(dtype)}
