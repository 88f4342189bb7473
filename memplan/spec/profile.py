"""Model profiles: architectures as validated data, with exact parameter counts.

A profile is a small YAML file in ``profiles/`` (a whole model) or ``profiles/components/`` (one part).
Each component spec below knows its parameter count, split by module kind, from the same formulas
the transformers modeling files imply (sources cited per method). ``tests/test_profiles.py`` checks
the totals against docs/sa2va-reference.md and, where transformers is installed, against the
instantiated modules on the meta device.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ComponentSpecBase(Spec):
    """A model part: parameters per module kind (``param_groups``), and their sum."""

    def param_groups(self) -> dict[str, int]:
        raise NotImplementedError

    def param_count(self) -> int:
        return sum(self.param_groups().values())


def _linear(d_in: int, d_out: int, bias: bool = True) -> int:
    """nn.Linear parameters: d_in*d_out weights (+ d_out bias)."""
    return d_in * d_out + (d_out if bias else 0)


def _norm(dim: int, kind: str) -> int:
    """LayerNorm has weight and bias (2*dim); RMSNorm only a weight (dim)."""
    return 2 * dim if kind == "layernorm" else dim


class LLMSpec(ComponentSpecBase):
    """A decoder-only LLM (Qwen2/2.5, Qwen3, Llama, InternLM2 as Llama with split wqkv)."""

    kind: Literal["llm"] = "llm"
    architecture: Literal["qwen2", "qwen3", "llama", "internlm2"]
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v bias (Qwen2 family)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)

    @model_validator(mode="after")
    def _heads_divide(self) -> "LLMSpec":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads({self.num_heads}) % num_kv_heads({self.num_kv_heads}) != 0"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size({self.hidden_size}) % num_heads({self.num_heads}) != 0 and no head_dim"
            )
        return self

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.dim_per_head

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.dim_per_head

    def linear_shapes(self) -> list[tuple[str, int, int]]:
        """(name, d_in, d_out) of every nn.Linear in one decoder layer: what LoRA 'all-linear' wraps."""
        h, f = self.hidden_size, self.intermediate_size
        return [
            ("q_proj", h, self.q_dim),
            ("k_proj", h, self.kv_dim),
            ("v_proj", h, self.kv_dim),
            ("o_proj", self.q_dim, h),
            ("gate_proj", h, f),
            ("up_proj", h, f),
            ("down_proj", f, h),
        ]

    def param_groups(self) -> dict[str, int]:
        """Per module kind, from transformers' Qwen2/Qwen3/Llama modeling files.

        attention: q,k,v,o projections (+ q/k/v bias for Qwen2, + 2*head_dim qk-norm for Qwen3);
        mlp: gate, up, down without bias; norms: two RMSNorms per layer and the final one;
        embeddings V*h; lm_head V*h unless tied.
        """
        h, layers = self.hidden_size, self.num_layers
        bias = self.attention_bias
        attention = (
            _linear(h, self.q_dim, bias)
            + 2 * _linear(h, self.kv_dim, bias)
            + _linear(self.q_dim, h, False)
            + (2 * self.dim_per_head if self.qk_norm else 0)
        )
        mlp = 3 * h * self.intermediate_size
        return {
            "attention": layers * attention,
            "mlp": layers * mlp,
            "norms": layers * 2 * h + h,
            "embeddings": self.vocab_size * h,
            "lm_head": 0 if self.tie_word_embeddings else self.vocab_size * h,
        }

    @cached_property
    def layer_params(self) -> int:
        """Parameters of one decoder layer's attention and MLP (what one layer gathers or casts)."""
        groups = self.param_groups()
        return (groups["attention"] + groups["mlp"]) // self.num_layers

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @cached_property
    def _widths_sum(self) -> dict[str, int]:
        return {name: d_in + d_out for name, d_in, d_out in self.linear_shapes()}

    def lora_params(self, rank: int, targets: tuple[str, ...] | None) -> int:
        """LoRA adds A (r x d_in) and B (d_out x r) per wrapped linear: r*(d_in+d_out) (Hu et al. 2021)."""
        widths = self._widths_sum
        total = sum(widths.values()) if targets is None else sum(w for n, w in widths.items() if n in targets)
        return self.num_layers * rank * total


class VisionSpec(ComponentSpecBase):
    """A ViT vision tower: InternViT (300M/6B), Qwen2.5-VL or Qwen3-VL vision blocks.

    Its projector/merger is a separate ProjectorSpec so that the two can be frozen apart.
    """

    kind: Literal["vision"] = "vision"
    architecture: Literal["internvit", "qwen2_5_vl", "qwen3_vl"]
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    patch_size: int = Field(gt=0)
    image_size: int = Field(default=448, gt=0)  # pixels of one tile
    temporal_patch_size: int = Field(default=1, gt=0)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    qkv_bias: bool = True
    qk_norm: bool = False  # InternViT-6B: RMSNorm over the full width of q and of k
    layer_scale: bool = False  # InternViT: ls1, ls2 per layer
    gated_mlp: bool = False  # Qwen2.5-VL: SwiGLU with biases
    cls_token: bool = False
    num_position_embeddings: int = Field(default=0, ge=0)  # learned absolute positions
    patch_bias: bool = True
    window_size: int | None = None  # Qwen2.5-VL windowed attention (pixels)
    full_attention_layers: tuple[int, ...] = ()

    def param_groups(self) -> dict[str, int]:
        """Per module kind, from modeling_intern_vit.py / transformers' qwen2_5_vl, qwen3_vl.

        attention: qkv (+bias) and proj (+bias) (+ qk-norm over the full width);
        mlp: fc1/fc2 with bias, or gate/up/down with bias when gated;
        norms: two per layer (+ layer-scale vectors 2*h); embeddings: patch conv
        (channels*temporal*patch^2*h + bias), cls token, position table.
        """
        h, f, layers = self.hidden_size, self.intermediate_size, self.num_layers
        attention = _linear(h, 3 * h, self.qkv_bias) + _linear(h, h, True)
        if self.qk_norm:
            attention += 2 * _norm(h, self.norm)
        mlp = (2 * _linear(h, f) + _linear(f, h)) if self.gated_mlp else (_linear(h, f) + _linear(f, h))
        norms = 2 * _norm(h, self.norm) + (2 * h if self.layer_scale else 0)
        patch = 3 * self.temporal_patch_size * self.patch_size**2 * h + (h if self.patch_bias else 0)
        embeddings = patch + (h if self.cls_token else 0) + self.num_position_embeddings * h
        return {
            "attention": layers * attention,
            "mlp": layers * mlp,
            "norms": layers * norms,
            "embeddings": embeddings,
        }

    @cached_property
    def layer_params(self) -> int:
        """Parameters of one ViT layer's attention and MLP."""
        groups = self.param_groups()
        return (groups["attention"] + groups["mlp"]) // self.num_layers

    @property
    def patches_per_tile(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens_per_tile(self) -> int:
        """Tokens the ViT runs per tile: (448/14)^2 = 1024 patches (+1 CLS for InternViT)."""
        return self.patches_per_tile + (1 if self.cls_token else 0)


class ProjectorSpec(ComponentSpecBase):
    """Vision-to-LLM projector after a 2x2 pixel shuffle/merge (InternVL mlp1, Qwen-VL merger).

    InternVL mlp1: LayerNorm(4C) -> Linear(4C, h) -> GELU -> Linear(h, h).
    Qwen2.5-VL merger: RMSNorm(C) -> Linear(4C, 4C) -> GELU -> Linear(4C, h).
    Qwen3-VL adds ``deepstack_mergers`` copies whose norm is LayerNorm(4C) (use_postshuffle_norm).
    """

    kind: Literal["projector"] = "projector"
    input_size: int = Field(gt=0)  # C, the vision width
    merge_factor: int = Field(default=4, gt=0)  # tokens merged into one (2x2)
    hidden_size: int = Field(gt=0)
    output_size: int = Field(gt=0)  # the LLM width
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_after_merge: bool = True  # InternVL: norm on 4C; Qwen2.5-VL: on C
    deepstack_mergers: int = Field(default=0, ge=0)

    @property
    def merged_size(self) -> int:
        return self.input_size * self.merge_factor

    def _one(self, norm_dim: int) -> int:
        return (
            _norm(norm_dim, self.norm)
            + _linear(self.merged_size, self.hidden_size)
            + _linear(self.hidden_size, self.output_size)
        )

    def param_groups(self) -> dict[str, int]:
        main_norm = self.merged_size if self.norm_after_merge else self.input_size
        return {
            "projector": self._one(main_norm),
            "deepstack": self.deepstack_mergers * self._one(self.merged_size),
        }


class Sam2Spec(ComponentSpecBase):
    """SAM2 with a Hiera trunk (facebookresearch/sam2 sam2/modeling/backbones/hieradet.py).

    The mask decoder, prompt encoder and memory modules share one architecture across sizes;
    their counts are stated as data (counted from transformers' Sam2 modules, see the profile).
    """

    kind: Literal["sam2"] = "sam2"
    embed_dim: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    stages: tuple[int, int, int, int]
    global_attention_blocks: tuple[int, ...]
    window_spec: tuple[int, int, int, int]
    window_pos_embed_bkg: tuple[int, int] = (7, 7)  # sam2 configs; (14, 14) for base+
    neck_dim: int = 256
    image_size: int = 1024  # native input resolution
    mask_decoder_params: int = Field(gt=0)
    prompt_encoder_params: int = Field(ge=0)
    memory_params: int = Field(ge=0)  # memory attention + memory encoder (+ small heads): loaded, unused
    neck_params: int | None = Field(default=None, ge=0)  # None: derived from the FPN formula

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(4))

    def trunk_groups(self) -> dict[str, int]:
        """Hiera blocks: LN, qkv Linear(d_in, 3*d_out), proj, LN, MLP(4x), and a Linear(d_in, d_out)
        at each stage's first block; patch embed Conv(3, C, 7x7); window and background pos embeds."""
        attention = mlp = norms = 0
        d_in = self.embed_dim
        for stage, blocks in enumerate(self.stages):
            d_out = self.stage_dims[stage]
            for _ in range(blocks):
                attention += _linear(d_in, 3 * d_out) + _linear(d_out, d_out)
                if d_in != d_out:
                    attention += _linear(d_in, d_out)
                mlp += _linear(d_out, 4 * d_out) + _linear(4 * d_out, d_out)
                norms += 2 * d_in + 2 * d_out
                d_in = d_out
        c = self.embed_dim
        bkg_h, bkg_w = self.window_pos_embed_bkg
        embeddings = 3 * 49 * c + c + c * bkg_h * bkg_w + c * self.window_spec[0] ** 2
        return {"attention": attention, "mlp": mlp, "norms": norms, "embeddings": embeddings}

    def neck_count(self) -> int:
        """FPN neck: a 1x1 conv (+bias) from each stage width to neck_dim (sam2 image_encoder.neck;
        the decoder's conv_s0/conv_s1 belong to mask_decoder_params, as in SAM2's sam_mask_decoder)."""
        if self.neck_params is not None:
            return self.neck_params
        return sum(d * self.neck_dim + self.neck_dim for d in self.stage_dims)

    def encoder_param_count(self) -> int:
        return sum(self.trunk_groups().values()) + self.neck_count() + self.memory_params

    def decoder_param_count(self) -> int:
        return self.mask_decoder_params + self.prompt_encoder_params

    def param_groups(self) -> dict[str, int]:
        return {
            **{f"trunk_{k}": v for k, v in self.trunk_groups().items()},
            "neck": self.neck_count(),
            "memory": self.memory_params,
            "mask_decoder": self.mask_decoder_params,
            "prompt_encoder": self.prompt_encoder_params,
        }


class SegHeadSpec(ComponentSpecBase):
    """Sa2VA text_hidden_fcs: Linear(h, h) -> ReLU -> Linear(h, out)."""

    kind: Literal["seg_head"] = "seg_head"
    input_size: int = Field(gt=0)
    output_size: int = Field(default=256, gt=0)

    def param_groups(self) -> dict[str, int]:
        return {"seg_head": _linear(self.input_size, self.input_size) + _linear(self.input_size, self.output_size)}


ComponentSpec = Annotated[
    Union[LLMSpec, VisionSpec, ProjectorSpec, Sam2Spec, SegHeadSpec], Field(discriminator="kind")
]


class Profile(Spec):
    """A model to plan: any sub-combination of vision tower, projector, LLM, SAM2 and seg head."""

    name: str
    description: str = ""
    source: str = Field(min_length=1)  # the config.json / paper the numbers come from
    llm: LLMSpec | None = None
    vision: VisionSpec | None = None
    projector: ProjectorSpec | None = None
    sam2: Sam2Spec | None = None
    seg_head: SegHeadSpec | None = None

    @model_validator(mode="after")
    def _parts_connect(self) -> "Profile":
        if not any((self.llm, self.vision, self.projector, self.sam2, self.seg_head)):
            raise ValueError("a profile needs at least one of llm, vision, projector, sam2, seg_head")
        if self.projector and self.vision and self.projector.input_size != self.vision.hidden_size:
            raise ValueError(
                f"projector.input_size({self.projector.input_size}) != vision.hidden_size({self.vision.hidden_size})"
            )
        if self.projector and self.llm and self.projector.output_size != self.llm.hidden_size:
            raise ValueError(
                f"projector.output_size({self.projector.output_size}) != llm.hidden_size({self.llm.hidden_size})"
            )
        if self.seg_head and self.llm and self.seg_head.input_size != self.llm.hidden_size:
            raise ValueError(
                f"seg_head.input_size({self.seg_head.input_size}) != llm.hidden_size({self.llm.hidden_size})"
            )
        if self.seg_head and self.sam2 and self.seg_head.output_size != self.sam2.neck_dim:
            raise ValueError(
                f"seg_head.output_size({self.seg_head.output_size}) != sam2.neck_dim({self.sam2.neck_dim})"
            )
        if self.vision and self.llm and not self.projector:
            raise ValueError("vision and llm need a projector between them (projector: missing)")
        return self

    def component_params(self) -> dict[str, int]:
        """Parameter count per memplan Component name (sam2 split into encoder and decoder)."""
        out: dict[str, int] = {}
        if self.llm:
            out["llm"] = self.llm.param_count()
        if self.vision:
            out["vision"] = self.vision.param_count()
        if self.projector:
            out["projector"] = self.projector.param_count()
        if self.sam2:
            out["sam2_encoder"] = self.sam2.encoder_param_count()
            out["sam2_decoder"] = self.sam2.decoder_param_count()
        if self.seg_head:
            out["seg_head"] = self.seg_head.param_count()
        return out

    @cached_property
    def component_params_cached(self) -> dict[str, int]:
        """component_params(), computed once per (immutable) profile."""
        return self.component_params()

    def param_count(self) -> int:
        return sum(self.component_params_cached.values())

    @property
    def image_tokens_per_tile(self) -> int:
        """LLM tokens one 448px tile (or video frame) becomes: the ViT's patches over the projector's
        merge ((448/14)^2 / 4 = 256 for InternVL's 2x2 pixel shuffle, modeling_internvl_chat.py
        pixel_shuffle). Without a projector, the merge the tower does itself: the Qwen-VL vision
        models end in their own 2x2 merger (4), InternViT in none (1). Without a vision tower: 256."""
        if self.vision is None:
            return 256
        if self.projector is not None:
            merge = self.projector.merge_factor
        else:
            merge = 1 if self.vision.architecture == "internvit" else 4
        return self.vision.patches_per_tile // merge
