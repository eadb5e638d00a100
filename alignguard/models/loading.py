"""Loading a diffusers text-to-image pipeline: the mechanics every model family shares.

``path`` is a local directory in diffusers layout or a hub id (``stable-diffusion-v1-5/
stable-diffusion-v1-5``); with ``HF_HUB_OFFLINE=1`` only local files are used. Which pipeline
class a family uses and what its ``model.path`` names (the toy family's ``toyworld``) is the
family's business: :func:`alignguard.families.load_pipeline` is the entry point.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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
# ``from_pretrained`` arguments of an SD-layout pipeline without its safety checker: alignment is
# measured by our own evaluators, and the checker would black out exactly the images under study.
NO_SAFETY_CHECKER = {"safety_checker": None, "requires_safety_checker": False}
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


def load_diffusers_pipeline(
    spec: ModelSection,
    pipeline_cls: type[DiffusionPipeline],
    path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    extra_kwargs: Mapping[str, object] | None = None,
) -> DiffusionPipeline:
    """Load ``pipeline_cls`` from ``path`` (already resolved by the family) as ``spec`` says, on
    ``device`` in ``dtype``; ``extra_kwargs`` (the family's) go to ``from_pretrained``."""
    target = resolve_device(spec.device) if device is None else torch.device(device)
    torch_dtype = dtype or resolve_dtype(spec.dtype, target)
    kwargs: dict = {"dtype": torch_dtype}
    if spec.revision:
        kwargs["revision"] = spec.revision
    if spec.variant:
        kwargs["variant"] = spec.variant
    kwargs.update(extra_kwargs or {})
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
