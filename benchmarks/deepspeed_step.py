"""Which DeepSpeed settings should an expert's training run with? The DPO step, side by side.

    python benchmarks/deepspeed_step.py                   # full-size SD1.5 + SDXL on one GPU (~2 min)
    python benchmarks/deepspeed_step.py --dry-run         # tiny models on the CPU (gloo): the code path

``benchmarks/gpu.py`` found the DeepSpeed-wrapped step slower than a plain torch step (H200:
0.80x on SD1.5, 0.67x on SDXL). The two do not do the same work: DeepSpeed keeps fp32 master
weights of the bf16 LoRA and clips the gradient norm, the plain step updates bf16 weights in
place (too coarse for a 1e-5 learning rate). This script times, in one process and one after the
other on the same model and batch, the expert trainer's step
(``alignguard.training.trainer.ExpertTrainer``) on a plain torch engine and on a DeepSpeed engine
under each variant of the ``training`` keys that change its cost (``zero_stage``,
``max_grad_norm``, ``optimizer``), each with a fresh LoRA, so the ratios say which setting the
configs should use. Every other recipe value (β, LoRA, learning rate) is the family's
``configs/<family>.yaml``. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import gpu

# (label, training overrides) over the family's recipe. configs/sd15.yaml runs "zero2 clip1.0";
# configs/sdxl.yaml "zero2 clip1.0 adafactor".
VARIANTS: tuple[tuple[str, dict], ...] = (
    ("zero0 clip1.0", {"zero_stage": 0, "max_grad_norm": 1.0, "optimizer": "adamw"}),
    ("zero1 clip1.0", {"zero_stage": 1, "max_grad_norm": 1.0, "optimizer": "adamw"}),
    ("zero2 clip1.0", {"zero_stage": 2, "max_grad_norm": 1.0, "optimizer": "adamw"}),
    ("zero1 no-clip", {"zero_stage": 1, "max_grad_norm": None, "optimizer": "adamw"}),
    ("zero2 no-clip", {"zero_stage": 2, "max_grad_norm": None, "optimizer": "adamw"}),
    ("zero0 clip1.0 adafactor", {"zero_stage": 0, "max_grad_norm": 1.0, "optimizer": "adafactor"}),
    ("zero1 clip1.0 adafactor", {"zero_stage": 1, "max_grad_norm": 1.0, "optimizer": "adafactor"}),
    ("zero2 clip1.0 adafactor", {"zero_stage": 2, "max_grad_norm": 1.0, "optimizer": "adafactor"}),
)
PLAIN = "plain torch AdamW (bf16 weights)"
MASTER = "plain torch, fp32 LoRA + autocast + clip"


def fresh_lora(pipe, device, dtype) -> None:
    """Drop the previous variant's adapter (and DeepSpeed's hooks on its parameters)."""
    if getattr(pipe.unet, "peft_config", None):
        pipe.unet.delete_adapters("default")


def time_steps(step, steps: int, device) -> float:
    for _ in range(3):  # warm-ups: kernels, allocator, DeepSpeed's lazy buffers, GPU clocks
        step()
    return gpu.timed(lambda: [step() for _ in range(steps)], device) / steps


def master_weights_step(pipe, plan, device, dtype):
    """Plain torch doing DeepSpeed's work: fp32 LoRA weights, bf16 autocast, clipping, fused AdamW."""
    from alignguard.training.engine import plain_engine

    def engine(unet, training):
        for param in unet.parameters():
            if param.requires_grad:
                param.data = param.data.float()
        return plain_engine(unet, training)

    autocast = None if dtype == torch.float32 else dtype
    trainer = gpu.dpo_trainer(
        pipe,
        plan,
        device,
        dtype,
        engine=engine,
        autocast_dtype=autocast,
        optimizer="adamw",
        max_grad_norm=1.0,
    )
    return gpu.trainer_step(trainer)


def make_step(name: str, overrides: dict | None, pipe, plan, device, dtype, deepspeed):
    fresh_lora(pipe, device, dtype)
    if name == PLAIN:
        trainer = gpu.dpo_trainer(pipe, plan, device, dtype, optimizer="adamw", max_grad_norm=None)
        return gpu.trainer_step(trainer)
    if name == MASTER:
        return master_weights_step(pipe, plan, device, dtype)
    return gpu.deepspeed_dpo_step(pipe, plan, device, dtype, deepspeed, **overrides)


def run_family(plan, dry_run: bool, device, dtype, deepspeed, rounds: int) -> dict:
    """Every row ``rounds`` times, in alternating order, so drift (clocks, allocator) evens out."""
    pipe = gpu.build_pipeline(plan.family, dry_run, device, dtype)
    rows = [(PLAIN, None), (MASTER, None)] + [(f"deepspeed {label}", o) for label, o in VARIANTS]
    seconds: dict[str, list[float]] = {name: [] for name, _ in rows}
    for round_index in range(rounds):
        for name, overrides in rows if round_index % 2 == 0 else rows[::-1]:
            step = make_step(name, overrides, pipe, plan, device, dtype, deepspeed)
            seconds[name].append(time_steps(step, plan.dpo_steps, device))
            rate = plan.dpo_batch / seconds[name][-1]
            print(f"{plan.family} round {round_index + 1}: {name}: {rate:.2f} pairs/s", flush=True)
    plain = min(seconds[PLAIN])
    return {
        name: {
            "pairs_per_s": plan.dpo_batch / min(s),
            "vs_plain": plain / min(s),
            "seconds_per_step": s,
        }
        for name, s in seconds.items()
    }


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU (fp32, gloo)")
    parser.add_argument("--rounds", type=_positive_int, default=2, help="passes over the rows (best is kept)")
    args = parser.parse_args(argv)
    families = [m.strip() for m in args.models.split(",") if m.strip()]
    if not families or set(families) - set(gpu.FULL):
        parser.error(f"--models: choose from {sorted(gpu.FULL)}")
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device is visible; use --dry-run for the CPU code path", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    dtype = torch.float32 if args.dry_run else torch.bfloat16

    os.environ.setdefault("DS_ACCELERATOR", device.type)
    import deepspeed

    backend = gpu._single_rank_process_group(device, deepspeed)
    started = time.monotonic()
    results = {}
    for family in families:
        plans = gpu.TINY if args.dry_run else gpu.FULL
        results[family] = run_family(plans[family], args.dry_run, device, dtype, deepspeed, args.rounds)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n| model | step | pairs/s (best round) | vs plain |\n|---|---|---|---|")
    for family, rows in results.items():
        for name, row in rows.items():
            print(f"| {family} | {name} | {row['pairs_per_s']:.2f} | {row['vs_plain']:.2f} |")
    card = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(device)
    line = {
        "device": card,
        "backend": backend,
        "wall_s": round(time.monotonic() - started, 1),
        "results": results,
    }
    print(json.dumps(line))
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
