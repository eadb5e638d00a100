"""GPU-hour estimates per pipeline stage, from FLOP counts and an assumed MFU.

FLOPs were counted with torch's FLOP counter on the full-size architectures (meta device;
``../shared/notes/performance.md``): one UNet forward is 0.803 TFLOP for SD1.5 at 512 px and
6.761 TFLOP for SDXL at 1024 px; one image with classifier-free guidance is 42.7 TFLOP for SD1.5
at 25 steps and 416 TFLOP for SDXL at 30 steps (the rest of the pipeline — text encoders, VAE
decode — is the difference: 2.55 and 10.3 TFLOP); one Diffusion-DPO step per preference pair
(LoRA, the adapter-disabled policy as reference, cached latents) is 4.8 TFLOP for SD1.5 (6.4 with
gradient checkpointing) and 40.6 TFLOP for SDXL.

    GPU-hours = TFLOP / (peak TFLOP/s x MFU) / 3600

Assumptions (stated where used): the work of each stage follows from the config (pairs, steps,
batch sizes, workers); evaluation renders every category's prompts with the base and the merged
model, and each expert on its own category; Co-Merge's calibration runs one UNet forward per
expert per calibration sample; SDXL's gradient-checkpointing overhead is SD1.5's ratio (6.4/4.8);
other resolutions scale with the pixel count (attention grows faster: an underestimate above the
reference size). MFU is an input: an assumed figure, or per stage from a ``benchmarks/gpu.py``
result (:func:`measured_mfu`): image-making stages (synthesis, evaluation, calibration) at the
renderer's measured MFU, training at the DPO step's as the fleet runs it (through DeepSpeed).
"""

from __future__ import annotations

from dataclasses import dataclass

from alignguard.config.schema import ExperimentConfig

UNET_FORWARD_TFLOP = {"sd15": 0.803, "sdxl": 6.761}
REFERENCE_RESOLUTION = {"sd15": 512, "sdxl": 1024}
# Per image, besides the UNet: text encoders and VAE decode (performance notes' per-image totals).
IMAGE_OVERHEAD_TFLOP = {"sd15": 42.7 - 25 * 2 * 0.803, "sdxl": 416.0 - 30 * 2 * 6.761}
DPO_PAIR_TFLOP = {"sd15": 4.8, "sdxl": 40.6}
CHECKPOINTING_FACTOR = 6.4 / 4.8
COPROV2_PAIRS = 15_690
H100_BF16_PEAK_TFLOPS = 989.0


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    tflop: float
    work: str  # what was counted, for a person to check
    gpus: float  # GPUs the config runs the stage on at once

    def gpu_hours(self, mfu: float, peak_tflops: float = H100_BF16_PEAK_TFLOPS) -> float:
        return self.tflop / (peak_tflops * mfu) / 3600.0

    def wall_hours(self, mfu: float, peak_tflops: float = H100_BF16_PEAK_TFLOPS) -> float:
        """Hours on the config's parallelism (NaN for a stage the config runs without GPUs)."""
        return self.gpu_hours(mfu, peak_tflops) / self.gpus if self.gpus > 0 else float("nan")


@dataclass(frozen=True)
class MeasuredMfu:
    """Per-stage MFU of one model family, read off a ``benchmarks/gpu.py`` result."""

    images: float  # synthesis, evaluation, calibration: UNet-FLOP MFU of batched rendering
    training: float  # the DPO step, through DeepSpeed when the benchmark measured that
    card: str
    peak_tflops: float

    def for_stage(self, stage: str) -> float:
        return self.training if stage == "training" else self.images


def measured_mfu(benchmark: dict, family: str) -> MeasuredMfu:
    """The MFUs that ``benchmark`` (``benchmarks/gpu.py --json`` output) measured for ``family``."""
    if benchmark.get("dry_run"):
        raise ValueError("the benchmark result is a --dry-run on the CPU: it has no MFU")
    rows = [r for r in benchmark.get("results", []) if r.get("family") == family]
    if not rows:
        measured = sorted(r.get("family") for r in benchmark.get("results", []))
        raise ValueError(f"the benchmark result has no {family!r} figures (it measured {measured})")
    row = rows[0]
    training = row.get("dpo_mfu")
    if training is not None and row.get("deepspeed_vs_plain") is not None:
        training *= row["deepspeed_vs_plain"]  # the fleet steps through DeepSpeed
    if row.get("synthesis_mfu") is None or training is None or not benchmark.get("peak_bf16_tflops"):
        raise ValueError(
            f"the benchmark result's {family!r} row lacks synthesis or DPO MFU: {row.get('skipped')}"
        )
    return MeasuredMfu(row["synthesis_mfu"], training, benchmark["device"], benchmark["peak_bf16_tflops"])


def _family(config: ExperimentConfig) -> str:
    family = config.model.family
    if family not in UNET_FORWARD_TFLOP:
        raise ValueError(
            f"no FLOP count for model.family {family!r} (known: {sorted(UNET_FORWARD_TFLOP)}); "
            "the toy model runs on CPUs"
        )
    return family


def _scale(config: ExperimentConfig, family: str) -> float:
    return (config.model.resolution / REFERENCE_RESOLUTION[family]) ** 2


def image_tflop(config: ExperimentConfig, steps: int, guidance: float) -> float:
    """One generated image: ``steps`` UNet passes (two with classifier-free guidance) + the rest."""
    family = _family(config)
    passes = 2 if guidance > 1.0 else 1
    unet = steps * passes * UNET_FORWARD_TFLOP[family]
    return (unet + IMAGE_OVERHEAD_TFLOP[family]) * _scale(config, family)


def training_pairs_per_expert(config: ExperimentConfig) -> int:
    """Preference pairs one per-category expert sees: steps x batch x accumulation x workers."""
    t = config.training
    return t.steps * t.batch_size * t.grad_accum * config.resources.training.concurrency


def expert_count(config: ExperimentConfig) -> tuple[int, int]:
    """(per-category experts, all-categories experts); the latter gets steps x categories."""
    categories = len(config.data.categories)
    per_category = categories if config.training.experts in ("per_category", "both") else 0
    single = 1 if config.training.experts in ("all_single", "both") else 0
    return per_category, single


def refine_forward_equivalents(config: ExperimentConfig) -> int:
    """UNet forward-equivalents of ``merge.refine``: per step, teacher passes (each category's
    expert on its share, the base model on the preservation batch) and the student's forward and
    backward (counted as 3 forwards) on both batches."""
    refine = config.merge.refine
    distilled = -(-refine.batch_size // len(config.data.categories)) * len(config.data.categories)
    per_step = distilled + refine.batch_size + 3 * (distilled + refine.batch_size)
    return refine.steps * per_step


def _gpus(resources, actors: int) -> float:
    return actors * resources.num_gpus


def estimate(config: ExperimentConfig, pairs: int | None = None) -> list[StageEstimate]:
    """Per-stage TFLOP of ``config``; ``pairs`` defaults to CoProV2 minus the held-out fraction."""
    family, r = _family(config), config.resources
    categories = len(config.data.categories)
    pairs = pairs if pairs is not None else round(COPROV2_PAIRS * (1 - config.data.test_fraction))
    s, e = config.synthesis, config.evaluation
    per_image = image_tflop(config, s.steps, s.guidance)
    synthesis = StageEstimate(
        "synthesis",
        2 * pairs * per_image,
        f"{2 * pairs:,} images x {per_image:.1f} TFLOP ({s.steps} steps)",
        _gpus(r.synthesis, r.synthesis.concurrency),
    )
    per_category, single = expert_count(config)
    experts = per_category + single * categories  # all_single trains categories x the steps
    pair_tflop = DPO_PAIR_TFLOP[family] * _scale(config, family)
    if config.training.gradient_checkpointing:
        pair_tflop *= CHECKPOINTING_FACTOR
    items = training_pairs_per_expert(config)
    concurrent = min(r.training.max_concurrent_experts, per_category + single)
    training = StageEstimate(
        "training",
        experts * items * pair_tflop,
        f"{experts} expert-equivalents x {items:,} pairs x {pair_tflop:.1f} TFLOP",
        concurrent * _gpus(r.training, r.training.concurrency),
    )
    calibration = config.merge.calibration
    samples = calibration.prompts_per_category * categories * calibration.timesteps
    forward = UNET_FORWARD_TFLOP[family] * _scale(config, family)
    refine_forwards = refine_forward_equivalents(config)
    merge = StageEstimate(
        "merge",
        (samples * per_category if config.merge.strategy == "co_merge" else 0) * forward
        + refine_forwards * forward,
        f"{samples:,} calibration samples x {per_category} experts x {forward:.2f} TFLOP"
        + (f" + refinement {refine_forwards:,} forward-equivalents" if refine_forwards else ""),
        r.merge.num_gpus,
    )
    eval_images = e.prompts_per_category * categories * 2 + e.prompts_per_category * per_category
    eval_image = image_tflop(config, e.steps, e.guidance)
    evaluation = StageEstimate(
        "evaluation",
        eval_images * eval_image,
        f"{eval_images:,} images x {eval_image:.1f} TFLOP ({e.steps} steps)",
        _gpus(r.evaluation, r.evaluation.concurrency),
    )
    return [synthesis, training, merge, evaluation]


def sizing_table(
    estimates: list[StageEstimate],
    mfus: tuple[float, ...],
    peak_tflops: float,
    measured: MeasuredMfu | None = None,
) -> str:
    """Markdown: per stage, the work, TFLOP, GPU-hours and wall hours at each assumed MFU, and at
    the ``measured`` per-stage MFUs (on the measured card's peak) when given."""
    head = "| stage | work | PFLOP | " + " | ".join(f"GPU-h @ {m:.0%} | wall h @ {m:.0%}" for m in mfus)
    columns = 3 + 2 * len(mfus)
    if measured is not None:
        head += " | measured MFU | GPU-h measured | wall h measured"
        columns += 3
    lines = [head + " |", "|" + "---|" * columns]
    for est in [*estimates, _total(estimates)]:
        cells = [f"{est.gpu_hours(m, peak_tflops):.2f} | {est.wall_hours(m, peak_tflops):.2f}" for m in mfus]
        if measured is not None:
            cells.append(_measured_cells(est, estimates, measured))
        lines.append(f"| {est.stage} | {est.work} | {est.tflop / 1000:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _measured_cells(est: StageEstimate, stages: list[StageEstimate], measured: MeasuredMfu) -> str:
    """A stage's measured-MFU cells; the total sums the stages (each has its own MFU)."""
    peak = measured.peak_tflops
    if est.stage in {s.stage for s in stages}:
        mfu = measured.for_stage(est.stage)
        return f"{mfu:.1%} | {est.gpu_hours(mfu, peak):.2f} | {est.wall_hours(mfu, peak):.2f}"
    per_stage = [(s, measured.for_stage(s.stage)) for s in stages]
    gpu_hours = sum(s.gpu_hours(m, peak) for s, m in per_stage)
    wall_hours = sum(s.wall_hours(m, peak) for s, m in per_stage if s.gpus > 0)
    return f" | {gpu_hours:.2f} | {wall_hours:.2f}"


def _total(estimates: list[StageEstimate]) -> StageEstimate:
    """The whole pipeline: stages run one after another, so wall hours add up."""
    tflop = sum(e.tflop for e in estimates)
    # Effective GPUs such that the total's wall hours are the sum of the stages' wall hours.
    wall_units = sum(e.tflop / e.gpus for e in estimates if e.gpus > 0)
    return StageEstimate("**total**", tflop, "", tflop / wall_units if wall_units else 0.0)
