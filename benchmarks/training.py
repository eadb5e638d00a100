"""Expert training throughput: the Ray Train + DeepSpeed loop against a plain PyTorch loop.

    python benchmarks/training.py [--steps 200] [--batch-size 8]     # toy model, CPU
    python benchmarks/training.py --gpu                              # SD1.5 architecture, bf16, GPU

Side by side in one run, the same trainer (``alignguard.training.trainer.ExpertTrainer``), model,
LoRA, batch and recipe (``configs/toy.yaml``):
  * plain: one process, a plain torch engine (``alignguard.training.engine.plain_engine``);
  * ray:   ``alignguard train`` for one expert on one Ray Train worker driving a DeepSpeed engine.
Throughput is the median seconds per optimizer step in steady state (each loop times its own
steps: the Ray loop writes ``step_seconds`` into steps.jsonl), reported as pairs/s; start-up
(worker group, DeepSpeed init) is reported separately. ``ratio_1_worker`` = ray / plain pairs/s
(goal >= 0.85). Peak memory compares the reference model as the policy with its adapter disabled
(ours) against a separate frozen reference UNet, each in its own process (peak RSS on CPU,
``max_memory_allocated`` on GPU). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from alignguard.config import load_config
from alignguard.io import RunDir
from alignguard.models.fullsize import UNET_FORWARD_TFLOP

H100_BF16_PEAK_TFLOPS = 989.0


def plain_loop(config, steps: int, reference: str) -> dict:
    """Train in this process; returns seconds per step (median) and peak memory in MB.

    The fleet's ``ExpertTrainer`` on a plain torch engine with the config's recipe; the weights in
    the compute dtype (bf16 on a GPU, no fp32 master copy). ``reference="copy"``: a separate frozen
    UNet as the DPO reference instead of the adapter switched off."""
    from diffusers import UNet2DConditionModel

    from alignguard.families import resolve_model_path
    from alignguard.training.deepspeed_config import precision_dtype
    from alignguard.training.engine import plain_engine
    from alignguard.training.experts import expert_sampler, load_policy
    from alignguard.training.trainer import ExpertTrainer

    device = torch.device("cuda" if torch.cuda.is_available() and config.model.device != "cpu" else "cpu")
    dtype = precision_dtype(config.training, on_gpu=device.type == "cuda")
    unet, scheduler = load_policy(config, device)
    frozen = None
    if reference == "copy":
        frozen = UNet2DConditionModel.from_pretrained(resolve_model_path(config.model), subfolder="unet")
        frozen = frozen.requires_grad_(False).to(device, dtype)
    if dtype != torch.float32:
        unet.to(dtype)
    trainer = ExpertTrainer(
        plain_engine(unet, config.training),
        scheduler,
        expert_sampler(config, category=None),  # the whole cache: the benchmark synthesizes one category
        config.training,
        steps=steps,
        seed=config.run.seed,
        device=device,
        dtype=dtype,
        reference=frozen,
    )
    seconds = [record["step_seconds"] for record in trainer.fit()]
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"step_seconds": statistics.median(seconds[min(5, steps // 4) :]), "peak_mb": round(peak, 1)}


def ray_loop(config) -> dict:
    from cluster.training import run_fleet

    start = time.perf_counter()
    (outcome,) = run_fleet(config)
    wall = time.perf_counter() - start
    if outcome.status == "failed":
        raise RuntimeError(outcome.error)
    lines = RunDir(config.run.output_dir).sub("experts", outcome.name).read_text("steps.jsonl").splitlines()
    seconds = [json.loads(line)["step_seconds"] for line in lines]
    steady = statistics.median(seconds[min(5, len(seconds) // 4) :])
    return {
        "step_seconds": steady,
        "wall_seconds": round(wall, 1),
        "startup_seconds": round(wall - sum(seconds), 1),
    }


def _memory_in_subprocess(args: argparse.Namespace, run: str, reference: str) -> float:
    command = [
        sys.executable,
        __file__,
        "--memory-probe",
        reference,
        "--run",
        run,
        *(["--gpu"] if args.gpu else []),
        "--batch-size",
        str(args.batch_size),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def _config(args: argparse.Namespace, run: str, *extra: str):
    overrides = [
        f"run.output_dir={run}",
        "data.categories=[violence]",
        f"training.batch_size={args.batch_size}",
        "training.monitor_prompts=0",
        "resources.training.num_cpus=1",
        *extra,
    ]
    if args.gpu:
        overrides += ["model.device=cuda", "training.precision=bf16", "resources.training.num_gpus=1"]
    return load_config("configs/toy.yaml", overrides)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gpu", action="store_true", help="SD1.5 architecture (random weights) on a GPU")
    parser.add_argument("--memory-probe", choices=["adapter", "copy"], help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_probe:
        print(json.dumps(plain_loop(_config(args, args.run), 8, args.memory_probe)))
        return
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device; none is visible")
    run = tempfile.mkdtemp(prefix="bench-training-")
    from cluster.synthesis import run_synthesis

    model_overrides = []
    if args.gpu:
        from alignguard.models.fullsize import save_random_pipeline

        model_dir = save_random_pipeline("sd15", f"{run}/sd15-random")
        model_overrides = [
            "model.family=sd15",
            f"model.path={model_dir}",
            "model.resolution=512",
            "synthesis.steps=4",
            "synthesis.batch_size=4",
            "synthesis.pairs_per_concept=4",
        ]
    run_synthesis(_config(args, run, "synthesis.pairs_per_concept=8", *model_overrides))
    plain = plain_loop(_config(args, run, *model_overrides), args.steps, "adapter")
    ray = ray_loop(
        _config(
            args,
            run,
            f"training.steps={args.steps}",
            f"training.checkpoint_every={args.steps}",
            *model_overrides,
        )
    )
    pairs_plain, pairs_ray = args.batch_size / plain["step_seconds"], args.batch_size / ray["step_seconds"]
    memory = {ref: _memory_in_subprocess(args, run, ref) for ref in ("adapter", "copy")}
    print(f"plain loop : {pairs_plain:7.2f} pairs/s ({plain['step_seconds'] * 1000:.1f} ms/step)")
    ray_ms = ray["step_seconds"] * 1000
    startup = ray["startup_seconds"]
    print(f"ray + ds   : {pairs_ray:7.2f} pairs/s ({ray_ms:.1f} ms/step), start-up {startup} s")
    print(
        f"peak memory: adapter-disabled reference {memory['adapter']:.0f} MB "
        f"vs separate reference UNet {memory['copy']:.0f} MB"
    )
    line = {
        "ratio_1_worker": round(pairs_ray / pairs_plain, 3),
        "pairs_per_s": {"plain": round(pairs_plain, 2), "ray_deepspeed": round(pairs_ray, 2)},
        "ray_startup_seconds": ray["startup_seconds"],
        "peak_mb": {
            "adapter_disabled_reference": memory["adapter"],
            "separate_reference_unet": memory["copy"],
        },
        "model": "sd15-random" if args.gpu else "toy",
        "batch_pairs": args.batch_size,
        "steps": args.steps,
    }
    if args.gpu:
        # Per pair: policy forward + backward on w and l (3 x 2 forwards) + reference forward on w and l.
        tflop_per_pair = (3 * 2 + 2) * UNET_FORWARD_TFLOP["sd15"]
        line["mfu_vs_h100_bf16"] = round(pairs_ray * tflop_per_pair / H100_BF16_PEAK_TFLOPS, 4)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
