"""The toy family: the CPU-sized model of :mod:`alignguard.toyworld`, whose images an exact judge
reads. Everything the library does differently for the toy world is decided here."""

from __future__ import annotations

from dataclasses import dataclass

from alignguard.families.sd import StableDiffusionFamily
from alignguard.toyworld.store import toy_model_path

# The evaluation prompt-set format of the toy world's own report suite (judged exactly).
TOY_PROMPT_FORMAT = "toyworld"


@dataclass(frozen=True)
class ToyFamily(StableDiffusionFamily):
    """The toy model is in the SD1.5 layout; ``model.path: toyworld`` names the shipped one."""

    def resolve_path(self, path: str) -> str:
        return toy_model_path(path)


TOY = ToyFamily(
    name="toy",
    prediction_type="epsilon",
    default_resolution=32,
    output_guard="toy_judge",
    calibration_source="toyworld",  # ground-truth scenes: the toy world knows what each prompt shows
    prompt_formats=(TOY_PROMPT_FORMAT, "coprov2", "prompts"),
    default_prompt_formats=(TOY_PROMPT_FORMAT,),
    judges_training=True,
    report_suite=True,
)
