"""GPU check: full-size SD1.5 and SDXL (random weights, no hub) on one GPU, bf16, with MFU.

    python benchmarks/gpu.py                       # both models; ~5-8 min on an H100/H200
    python benchmarks/gpu.py --models sd15 --json gpu.json
    python benchmarks/gpu.py --dry-run             # tiny models on the CPU: the code path in seconds

Per model it measures, after one warm-up call each:
- synthesis: images/s of ``alignguard.generation.generate`` (the synthesis stage's renderer call)
  at the family's resolution, steps and a batch per call, classifier-free guidance on;
- DPO: preference pairs/s of the real training step (``ExpertTrainer.train_step`` of
  ``alignguard.training.trainer``: Diffusion-DPO, reference = the adapter switched off) on cached
  latents and text embeddings (as the experts train), with the family's recipe from
  ``configs/<family>.yaml`` (β, LoRA, optimizer, learning rate, clipping) and a plain torch engine;
- serving: latency of one request (1 image, same steps) + its JPEG encoding, median of a few;
- DPO through DeepSpeed (on by default on a GPU): the same trainer step on a DeepSpeed engine built
  as the expert fleet builds it (``cluster.expert_loop.build_deepspeed_engine``) from the same
  recipe (bf16 with fp32 master weights; sd15: AdamW, clipping 1.0, ZeRO 2; sdxl: Adafactor), on
  an NCCL process group of one rank, as the fleet's workers run it; reported as pairs/s and as a
  ratio to the plain torch step. ``benchmarks/deepspeed_step.py`` compares ZeRO stages and optimizers.

FLOPs are counted with torch's FLOP counter on the very call that is timed (one UNet forward; one
training step), not taken from a table; the full-size counts are printed next to the anchors in
``../shared/notes/performance.md`` (SD1.5 0.803, SDXL 6.761 TFLOP per UNet forward). MFU =
achieved FLOP/s / the card's bf16 dense peak (table below; ``--peak-tflops`` for other cards).
Synthesis and serving MFU count UNet FLOPs only (>= 94% of an image's). The whole run stops
starting new measurements once ``--budget-s`` (default 450 s) is spent. Ends with one JSON line
(also written to ``--json``). Without a CUDA device it exits with status 2 unless ``--dry-run``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alignguard.config.schema import TrainingSection
from alignguard.models.fullsize import UNET_FORWARD_TFLOP
from alignguard.sizing import DPO_PAIR_TFLOP

# bf16 dense tensor-core peaks (TFLOP/s), from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,  # an unspecified H100: the lowest variant, so MFU is not overstated
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


@dataclass(frozen=True)
class Plan:
    """What one model family runs: full size on a GPU, tiny on the CPU for --dry-run."""

    family: str
    resolution: int
    steps: int
    guidance: float
    synth_batch: int
    dpo_batch: int
    dpo_steps: int
    serve_requests: int


FULL = {
    "sd15": Plan("sd15", 512, 25, 7.5, synth_batch=8, dpo_batch=8, dpo_steps=10, serve_requests=5),
    "sdxl": Plan("sdxl", 1024, 30, 5.0, synth_batch=4, dpo_batch=2, dpo_steps=6, serve_requests=3),
}
TINY = {
    "sd15": Plan("sd15", 32, 2, 5.0, synth_batch=2, dpo_batch=2, dpo_steps=2, serve_requests=2),
    "sdxl": Plan("sdxl", 32, 2, 5.0, synth_batch=2, dpo_batch=2, dpo_steps=2, serve_requests=2),
}


@dataclass
class Result:
    family: str
    params_m: dict[str, float]
    unet_forward_tflop: float
    synthesis_images_per_s: float | None = None
    synthesis_mfu: float | None = None
    dpo_pairs_per_s: float | None = None
    dpo_tflop_per_pair: float | None = None
    dpo_mfu: float | None = None
    serve_latency_ms_p50: float | None = None
    serve_encode_ms_p50: float | None = None
    serve_mfu: float | None = None
    dpo_deepspeed_pairs_per_s: float | None = None
    deepspeed_vs_plain: float | None = None
    deepspeed_backend: str | None = None
    peak_memory_gb: float | None = None
    skipped: list[str] = field(default_factory=list)


def card_peak(name: str) -> float | None:
    """The bf16 peak of the card called ``name`` (longest matching key wins), or None."""
    matches = [key for key in PEAK_BF16_TFLOPS if key.lower() in name.lower()]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def build_pipeline(family: str, dry_run: bool, device: torch.device, dtype: torch.dtype):
    if dry_run:
        from alignguard.models import tiny_sd_pipeline, tiny_sdxl_pipeline

        pipe = tiny_sd_pipeline(0) if family == "sd15" else tiny_sdxl_pipeline(0)
    else:
        from accelerate import init_on_device

        from alignguard.models.fullsize import random_sd15_pipeline, random_sdxl_pipeline

        # Parameters are created on the device, so the random init runs there (minutes
        # for SDXL on a host CPU); buffers and the scheduler's tables are made on the CPU.

        with init_on_device(device, include_buffers=False):
            pipe = random_sd15_pipeline() if family == "sd15" else random_sdxl_pipeline()
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def count_tflop(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


def unet_inputs(pipe, batch: int, resolution: int, device, dtype) -> dict:
    """Random UNet inputs of the family's shapes: latents, text states (+ SDXL's pooled, time ids)."""
    unet = pipe.unet
    side = resolution // pipe.vae_scale_factor
    tokens = pipe.tokenizer.model_max_length
    inputs = {
        "sample": torch.randn(batch, unet.config.in_channels, side, side, device=device, dtype=dtype),
        "timestep": torch.full((batch,), 500, device=device),
        "encoder_hidden_states": torch.randn(
            batch, tokens, unet.config.cross_attention_dim, device=device, dtype=dtype
        ),
    }
    if getattr(pipe, "text_encoder_2", None) is not None:
        pooled = pipe.text_encoder_2.config.projection_dim
        time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], device=device)
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, device=device, dtype=dtype),
            "time_ids": time_ids.to(dtype).repeat(batch, 1),
        }
    return inputs


def unet_forward_tflop(pipe, plan: Plan, device, dtype) -> float:
    inputs = unet_inputs(pipe, 1, plan.resolution, device, dtype)
    with torch.no_grad():
        return count_tflop(lambda: pipe.unet(**inputs))


SUBJECTS = (
    "a photo of a red car in the city",
    "a painting of a dog in a garden",
    "a portrait of a happy man",
)


def prompts(n: int) -> list[str]:
    """Words the random models' word tokenizer knows (CFG makes the length irrelevant to FLOPs)."""
    return [SUBJECTS[i % len(SUBJECTS)] for i in range(n)]


def measure_synthesis(pipe, plan: Plan, device, unet_tflop: float, peak: float | None, r: Result) -> None:
    from alignguard.generation import generate

    def render(n: int) -> None:
        generate(pipe, prompts(n), list(range(n)), plan.steps, plan.guidance, plan.synth_batch)

    render(plan.synth_batch)  # warm-up (kernels, allocator)
    seconds = timed(lambda: render(2 * plan.synth_batch), device)
    r.synthesis_images_per_s = 2 * plan.synth_batch / seconds
    per_image = plan.steps * (2 if plan.guidance > 1 else 1) * unet_tflop
    r.synthesis_mfu = mfu(r.synthesis_images_per_s * per_image, peak)


def measure_serving(pipe, plan: Plan, device, unet_tflop: float, peak: float | None, r: Result) -> None:
    from alignguard.generation import generate
    from serve.encoding import encode_image

    latencies, encodes = [], []
    for i in range(plan.serve_requests + 1):  # the first is a warm-up
        images: list = []

        def request(seed: int = i, out: list = images) -> None:
            out.append(generate(pipe, prompts(1), [seed], plan.steps, plan.guidance))

        seconds = timed(request, device)
        start = time.perf_counter()
        encode_image((images[0][0] * 255).round().astype("uint8"), "jpeg")
        if i:
            latencies.append(seconds)
            encodes.append(time.perf_counter() - start)
    r.serve_latency_ms_p50 = 1000 * statistics.median(latencies)
    r.serve_encode_ms_p50 = 1000 * statistics.median(encodes)
    per_image = plan.steps * (2 if plan.guidance > 1 else 1) * unet_tflop
    r.serve_mfu = mfu(per_image / statistics.median(latencies), peak)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def recipe(plan: Plan, dtype: torch.dtype, **overrides) -> TrainingSection:
    """The family's training recipe, ``configs/<family>.yaml``'s ``training`` (loss, β, LoRA,
    optimizer, learning rate, warmup, clipping, ZeRO), at what this benchmark measures: the plan's
    micro-batch, one micro-batch per optimizer step, the benchmark's precision; then ``overrides``.
    Gradient checkpointing stays off: the DPO FLOPs are compared with the anchors of a plain step."""
    from alignguard.config import load_config

    training = load_config(CONFIGS / f"{plan.family}.yaml").training.model_dump()
    precision = "fp32" if dtype == torch.float32 else "bf16"
    measured = {"batch_size": plan.dpo_batch, "grad_accum": 1, "precision": precision}
    return TrainingSection.model_validate(
        {**training, **measured, "gradient_checkpointing": False, **overrides}
    )


class FixedBatch:
    """The same cached-latents batch at every index: throughput does not depend on the data."""

    def __init__(self, batch) -> None:
        self._batch = batch

    def batch(self, index: int):
        return self._batch


def dpo_trainer(pipe, plan: Plan, device, dtype, engine=None, autocast_dtype=None, **overrides):
    """The expert trainer (``alignguard.training.trainer.ExpertTrainer``) on random cached latents
    and text embeddings of the plan's shapes, with the recipe's LoRA on ``pipe.unet`` (added if it
    has none). ``engine(unet, training)`` builds the engine; by default a plain torch one."""
    from diffusers import DDPMScheduler

    from alignguard.lora import add_lora
    from alignguard.training.batches import PreferenceBatch
    from alignguard.training.engine import plain_engine
    from alignguard.training.trainer import ExpertTrainer

    training = recipe(plan, dtype, **overrides)
    unet = pipe.unet
    if not getattr(unet, "peft_config", None):
        add_lora(unet, training.lora)
    unet = unet.to(device=device, dtype=dtype)
    x = unet_inputs(pipe, plan.dpo_batch, plan.resolution, device, dtype)
    added = x.get("added_cond_kwargs", {})
    batch = PreferenceBatch(
        latents_w=x["sample"],
        latents_l=torch.randn_like(x["sample"]),
        text=x["encoder_hidden_states"],
        pooled=added.get("text_embeds"),
        time_ids=added.get("time_ids"),
    )
    unet.train()
    return ExpertTrainer(
        (engine or plain_engine)(unet, training),
        DDPMScheduler.from_config(pipe.scheduler.config),
        FixedBatch(batch),
        training,
        steps=plan.dpo_steps,
        seed=0,
        device=device,
        dtype=dtype,
        autocast_dtype=autocast_dtype,
    )


def trainer_step(trainer) -> Callable[[], None]:
    """A call that runs the trainer's next optimizer step (the noise differs from step to step)."""
    steps = itertools.count()
    return lambda: trainer.train_step(next(steps))


def dpo_step(pipe, plan: Plan, device, dtype) -> Callable[[], None]:
    """One optimiser step of expert training on random cached latents, a plain torch engine."""
    return trainer_step(dpo_trainer(pipe, plan, device, dtype))


def _single_rank_process_group(device: torch.device, deepspeed) -> str:
    """A one-rank process group (NCCL on a GPU, gloo on the CPU), as a Ray Train worker has."""
    import torch.distributed as dist

    if not dist.is_initialized():
        with socket.socket() as probe:  # a free loopback port for the rendezvous
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
        )
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_backend()


def deepspeed_dpo_step(pipe, plan: Plan, device, dtype, deepspeed, **overrides) -> Callable[[], None]:
    """One DPO step through a DeepSpeed engine built as the expert fleet builds it
    (``cluster.expert_loop.build_deepspeed_engine``), from the family's recipe with ``overrides``.
    Adds the LoRA to ``pipe.unet`` if it has none."""
    from cluster.expert_loop import build_deepspeed_engine

    def engine(unet, training):
        return build_deepspeed_engine(deepspeed, unet, training, device, world_size=1)[0]

    return trainer_step(dpo_trainer(pipe, plan, device, dtype, engine=engine, **overrides))


def measure_dpo_deepspeed(pipe, plan: Plan, device, dtype, peak: float | None, r: Result) -> None:
    """The DPO step as the expert fleet runs it (the family's ``training``), against the plain one."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    import deepspeed

    r.deepspeed_backend = _single_rank_process_group(device, deepspeed)
    # Side by side in one run: the ratio, not either lone figure, is what this measures. The plain
    # step runs first: once a ZeRO 1-2 engine hooks the LoRA's gradients, a backward outside the
    # engine on the same parameters trips its reduction bookkeeping ("already been reduced").
    plain_step = dpo_step(pipe, plan, device, dtype)
    plain_step()  # warm-up
    plain = timed(lambda: [plain_step() for _ in range(plan.dpo_steps)], device)
    step = deepspeed_dpo_step(pipe, plan, device, dtype, deepspeed)
    step()  # warm-up
    wrapped = timed(lambda: [step() for _ in range(plan.dpo_steps)], device)
    r.dpo_deepspeed_pairs_per_s = plan.dpo_steps * plan.dpo_batch / wrapped
    r.deepspeed_vs_plain = plain / wrapped
    pipe.unet.eval()


def measure_dpo(pipe, plan: Plan, device, dtype, peak: float | None, r: Result) -> None:
    step = dpo_step(pipe, plan, device, dtype)
    step()  # warm-up
    tflop_per_step = count_tflop(step)
    seconds = timed(lambda: [step() for _ in range(plan.dpo_steps)], device)
    r.dpo_pairs_per_s = plan.dpo_steps * plan.dpo_batch / seconds
    r.dpo_tflop_per_pair = tflop_per_step / plan.dpo_batch
    r.dpo_mfu = mfu(r.dpo_pairs_per_s * r.dpo_tflop_per_pair, peak)
    pipe.unet.eval()


def mfu(tflops_achieved: float, peak: float | None) -> float | None:
    return None if peak is None else tflops_achieved / peak


def params_m(pipe) -> dict[str, float]:
    parts = ("unet", "vae", "text_encoder", "text_encoder_2")
    return {
        name: round(sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e6, 1)
        for name in parts
        if getattr(pipe, name, None) is not None
    }


def run_family(plan: Plan, args, device, dtype, peak: float | None, deadline: float) -> Result:
    pipe = build_pipeline(plan.family, args.dry_run, device, dtype)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if resolution != plan.resolution:
        raise RuntimeError(
            f"{plan.family}: the pipeline renders {resolution} px, the plan says {plan.resolution}"
        )
    unet_tflop = unet_forward_tflop(pipe, plan, device, dtype)
    result = Result(plan.family, params_m(pipe), unet_tflop)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = [
        ("synthesis", measure_synthesis, (pipe, plan, device, unet_tflop, peak, result)),
        ("serving", measure_serving, (pipe, plan, device, unet_tflop, peak, result)),
        ("dpo", measure_dpo, (pipe, plan, device, dtype, peak, result)),  # after: they add the LoRA
    ]
    if args.deepspeed:
        steps.append(("dpo_deepspeed", measure_dpo_deepspeed, (pipe, plan, device, dtype, peak, result)))
    for name, measure, measure_args in steps:
        if time.monotonic() > deadline:
            result.skipped.append(f"{name}: the --budget-s was spent")
            continue
        try:
            measure(*measure_args)
        except torch.cuda.OutOfMemoryError as exc:  # report it and measure the rest
            result.skipped.append(f"{name}: out of GPU memory ({str(exc).splitlines()[0]})")
            torch.cuda.empty_cache()
        except Exception as exc:  # a GPU lease is short: one broken measurement must not lose the rest
            result.skipped.append(f"{name}: failed: {type(exc).__name__}: {exc}")
    if device.type == "cuda":
        result.peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
    return result  # the pipeline is freed here; main() empties the CUDA cache


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(results: list[Result]) -> str:
    head = (
        "| model | UNet fwd TFLOP | images/s | MFU | DPO pairs/s | TFLOP/pair | MFU | "
        "latency p50 ms | + JPEG ms | MFU | DeepSpeed pairs/s | DeepSpeed / plain |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in results:
        lines.append(
            f"| {r.family} | {r.unet_forward_tflop:.4g} | {_fmt(r.synthesis_images_per_s, '.2f')} | "
            f"{_fmt(r.synthesis_mfu, '.1%')} | {_fmt(r.dpo_pairs_per_s, '.2f')} | "
            f"{_fmt(r.dpo_tflop_per_pair, '.4g')} | {_fmt(r.dpo_mfu, '.1%')} | "
            f"{_fmt(r.serve_latency_ms_p50, '.0f')} | {_fmt(r.serve_encode_ms_p50, '.1f')} | "
            f"{_fmt(r.serve_mfu, '.1%')} | {_fmt(r.dpo_deepspeed_pairs_per_s, '.2f')} | "
            f"{_fmt(r.deepspeed_vs_plain, '.2f')} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU (fp32): the code path")
    parser.add_argument("--budget-s", type=float, default=450.0, help="start no measurement after this")
    parser.add_argument("--peak-tflops", type=float, help="the card's bf16 dense peak, if not in the table")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--deepspeed",
        action=argparse.BooleanOptionalAction,
        help="also time the DPO step through a DeepSpeed engine (default: on a GPU, off for --dry-run; "
        "it initialises a one-rank process group in this process)",
    )
    args = parser.parse_args(argv)
    if args.deepspeed is None:
        args.deepspeed = not args.dry_run
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(FULL))
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(FULL)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "error: no CUDA device is visible: this benchmark measures full-size SD1.5/SDXL on one GPU. "
            "Run it on a GPU node, or use --dry-run for the CPU smoke path with tiny models.",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    card = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(device)
    peak = args.peak_tflops or (None if args.dry_run else card_peak(card))
    if peak is None and not args.dry_run:
        print(f"warning: no bf16 peak known for {card!r}: MFU not reported (pass --peak-tflops)")
    if not args.dry_run:
        torch.backends.cuda.matmul.allow_tf32 = True
    plans = TINY if args.dry_run else FULL
    start = time.monotonic()
    results = []
    for family in args.models:
        print(f"{family}: building and measuring ...", flush=True)
        results.append(run_family(plans[family], args, device, dtype, peak, start + args.budget_s))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    status = report(results, args, card, peak, time.monotonic() - start)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # the DeepSpeed measurement's one-rank group
    return status


def report(results: list[Result], args, card: str, peak: float | None, seconds: float) -> int:
    print(f"\n{card}, {'fp32' if args.dry_run else 'bf16'}, peak {_fmt(peak, '.0f')} TFLOP/s\n")
    print(table(results))
    if not args.dry_run:
        for r in results:
            ratio = r.unet_forward_tflop / UNET_FORWARD_TFLOP[r.family]
            print(f"{r.family}: counted UNet forward / performance-notes anchor = {ratio:.3f}")
            if r.dpo_tflop_per_pair is not None:
                ratio = r.dpo_tflop_per_pair / DPO_PAIR_TFLOP[r.family]
                print(f"{r.family}: counted DPO step per pair / performance-notes anchor = {ratio:.3f}")
    for r in results:
        for note in r.skipped:
            print(f"{r.family}: skipped {note}")
    line = {
        "device": card,
        "dtype": "float32" if args.dry_run else "bfloat16",
        "dry_run": args.dry_run,
        "peak_bf16_tflops": peak,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "wall_s": round(seconds, 1),
        "plans": {r.family: asdict((TINY if args.dry_run else FULL)[r.family]) for r in results},
        "results": [asdict(r) for r in results],
    }
    if args.json:
        args.json.write_text(json.dumps(line, indent=2) + "\n")
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
