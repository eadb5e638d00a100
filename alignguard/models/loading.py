"""Loading SD1.5, SD2.1, SDXL and the toy model through diffusers.

``path`` is a local directory in diffusers layout or a hub id (``stable-diffusion-v1-5/
stable-diffusion-v1-5``); with ``HF_HUB_OFFLINE=1`` only local files are used. The toy model
(family ``toy``, path ``toyworld``) is the SD layout shipped in :mod:`alignguard.toyworld`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from alignguard.config.schema import ModelSection

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "lms": LMSDiscreteScheduler,
}
PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "toy": StableDiffusionPipeline,
    "sd15": StableDiffusionPipeline,
    "sd21": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says where we looked."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA and float32 on CPU (CPU half precision is slow and lossy)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def resolve_model_path(spec: ModelSection) -> str:
    """The directory or hub id to load: ``toyworld`` maps to the shipped toy model."""
    if spec.family == "toy" and spec.path == "toyworld":
        from alignguard.toyworld.paths import shipped_model_dir  # the toy world is optional at import

        return str(shipped_model_dir())
    return spec.path


def load_pipeline(
    spec: ModelSection, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> DiffusionPipeline:
    """Load the text-to-image pipeline that ``spec`` names, on ``device`` in ``dtype``.

    The safety checker of SD1.5/2.1 is disabled: alignment is measured by our own evaluators, and
    the checker would black out exactly the images under study.
    """
    target = resolve_device(spec.device) if device is None else torch.device(device)
    torch_dtype = dtype or resolve_dtype(spec.dtype, target)
    path = resolve_model_path(spec)
    pipeline_cls = PIPELINE_CLASSES[spec.family]
    kwargs: dict = {"dtype": torch_dtype}
    if spec.revision:
        kwargs["revision"] = spec.revision
    if spec.variant:
        kwargs["variant"] = spec.variant
    if pipeline_cls is StableDiffusionPipeline:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = pipeline_cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        hint = "a local diffusers directory or a hub id"
        if not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE"):
            hint += " (HF_HUB_OFFLINE is set: only local paths work)"
        raise ModelLoadError(
            f"cannot load model.path={path!r} as {pipeline_cls.__name__}; expected {hint}: {exc}"
        ) from exc
    configure_pipeline(pipe, spec)
    pipe.to(target)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def configure_pipeline(pipe: DiffusionPipeline, spec: ModelSection) -> None:
    """Apply the scheduler override and attention backend of ``spec`` in place."""
    if spec.scheduler is not None:
        pipe.scheduler = SCHEDULERS[spec.scheduler].from_config(pipe.scheduler.config)
    set_attention_backend(pipe, spec.attention)


def set_attention_backend(pipe: DiffusionPipeline, backend: str) -> None:
    """``sdpa``: torch's scaled_dot_product_attention (flash/memory-efficient kernels on GPU);
    ``eager``: the reference implementation (bit-exact comparisons, debugging)."""
    processor = AttnProcessor2_0() if backend == "sdpa" else AttnProcessor()
    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None and hasattr(module, "set_attn_processor"):
            module.set_attn_processor(processor)
