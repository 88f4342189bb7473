"""Input shapes of one probe micro-batch, derived from a profile and a plan (no torch: the CLI checks
them before anything heavy is imported)."""

from __future__ import annotations

from dataclasses import dataclass

from memplan.spec.errors import InputError
from memplan.spec.flags import check_sequence, sequence_floor
from memplan.spec.plan import Plan
from memplan.spec.profile import Profile


class ProbeBuildError(ValueError):
    """A profile/plan combination the probe cannot build (one line, names the numbers)."""


@dataclass(frozen=True)
class Shapes:
    """Per-sample input shapes derived from the profile and plan.inputs."""

    micro_batch: int
    images: int  # tiles + frames per sample, one vision pass each
    image_size: int
    tokens_per_image: int  # LLM tokens per tile after the projector's merge
    text_tokens: int
    objects: int
    sam2_images: int  # SAM2 passes per sample: one per video frame, else one
    sam2_resolution: int


def input_shapes(profile: Profile, plan: Plan) -> Shapes:
    """Shapes of one micro-batch; raises ProbeBuildError when the image tokens overflow the sequence."""
    inputs = plan.inputs
    try:
        check_sequence(profile, plan)
    except InputError as error:
        raise ProbeBuildError(str(error)) from None
    images, per_image, objects = sequence_floor(profile, plan)
    return Shapes(
        micro_batch=inputs.micro_batch,
        images=images,
        image_size=profile.vision.image_size if profile.vision else 0,
        tokens_per_image=per_image,
        text_tokens=inputs.text_tokens,
        objects=objects,
        sam2_images=max(inputs.frames, 1) if profile.sam2 else 0,
        sam2_resolution=inputs.sam2_resolution,
    )
