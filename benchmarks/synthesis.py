"""Synthesis throughput: the Ray Data pipeline against a plain single-process loop, side by side.

    python benchmarks/synthesis.py [--pairs-per-concept 24] [--steps 10]       # toy model, CPU
    python benchmarks/synthesis.py --gpu                                       # SD1.5 architecture, GPU

Both sides render the same pairs with the same model, batch size (= shard size) and outputs
(PNG images, training cache, shard markers). The loop renders and writes shard after shard in
this process; the pipeline runs ``cluster.synthesis`` with 1 and then 2 renderer actors. Times
include loading the model (in the actors for Ray) but not ``ray.init``. Ends with one JSON line:
``ratio_1_worker`` = pipeline pairs/s with 1 renderer / loop pairs/s (goal >= 0.9).
With ``--gpu`` the model is SD1.5's full architecture with random weights (no hub needed) at
512 px, 25 steps, guidance 7.5, bf16; it also reports images/s and MFU against the card's peak.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from alignguard.config import load_config
from alignguard.io import RunDir
from alignguard.models.fullsize import UNET_FORWARD_TFLOP, save_random_pipeline
from alignguard.synthesis.plan import plan_shards
from alignguard.synthesis.render import PairRenderer
from alignguard.synthesis.sources import train_test_pairs
from alignguard.synthesis.store import write_shard
from cluster.runtime import init_ray
from cluster.synthesis import run_synthesis

H100_BF16_PEAK_TFLOPS = 989.0


def plain_loop(config) -> tuple[float, int]:
    """Render and write every shard in this process; returns (seconds, pairs)."""
    start = time.perf_counter()
    stage = RunDir(config.run.output_dir).sub("synthesis")
    train, _ = train_test_pairs(config, RunDir(config.run.output_dir))
    renderer = PairRenderer(
        config.model, config.synthesis.steps, config.synthesis.guidance, True, config.synthesis.cache_dtype
    )
    for shard in plan_shards(train, config.run.seed, config.synthesis.batch_size):
        rendered = renderer.render(
            [p.unsafe_prompt for p in shard.pairs],
            [p.safe_prompt for p in shard.pairs],
            [p.seed for p in shard.pairs],
        )
        write_shard(
            stage, shard, rendered, config.synthesis.image_format, config.synthesis.cache_dtype, "bench"
        )
    return time.perf_counter() - start, len(train)


def pipeline(config) -> tuple[float, int]:
    start = time.perf_counter()
    summary = run_synthesis(config)
    return time.perf_counter() - start, summary.rendered_pairs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs-per-concept", type=int, default=24)
    parser.add_argument(
        "--steps", type=int, help="sampling steps (default 10 on the toy model, 25 with --gpu)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per shard and per generator batch")
    parser.add_argument("--gpu", action="store_true", help="SD1.5 architecture on a GPU")
    args = parser.parse_args()
    args.steps = args.steps or (25 if args.gpu else 10)
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="bench-synthesis-")
    overrides = [
        f"synthesis.pairs_per_concept={args.pairs_per_concept}",
        f"synthesis.steps={args.steps}",
        f"synthesis.batch_size={args.batch_size}",
        "resources.synthesis.num_cpus=1",
    ]
    if args.gpu:
        model_dir = save_random_pipeline("sd15", f"{work}/sd15-random")
        overrides += [
            "model.family=sd15",
            f"model.path={model_dir}",
            "model.resolution=512",
            "model.device=cuda",
            "model.dtype=bfloat16",
            "synthesis.guidance=7.5",
            "synthesis.image_format=jpeg",
            "synthesis.cache_dtype=float16",
            "resources.synthesis.num_gpus=1",
        ]
    init_ray()
    results = {}
    for name, runner, workers in (("loop", plain_loop, 1), ("ray_1", pipeline, 1), ("ray_2", pipeline, 2)):
        if args.gpu and workers == 2 and torch.cuda.device_count() < 2:
            continue
        config = load_config(
            "configs/toy.yaml",
            [*overrides, f"run.output_dir={work}/{name}", f"resources.synthesis.concurrency={workers}"],
        )
        seconds, pairs = runner(config)
        results[name] = {
            "seconds": round(seconds, 2),
            "pairs": pairs,
            "pairs_per_s": round(pairs / seconds, 3),
        }
        print(f"{name:>6}: {pairs} pairs in {seconds:6.1f} s = {pairs / seconds:6.2f} pairs/s", flush=True)
    loop_rate = results["loop"]["pairs_per_s"]
    line = {
        "ratio_1_worker": round(results["ray_1"]["pairs_per_s"] / loop_rate, 3),
        "ratio_2_workers": round(results["ray_2"]["pairs_per_s"] / loop_rate, 3)
        if "ray_2" in results
        else None,
        "results": results,
        "model": "sd15-random" if args.gpu else "toy",
        "steps": args.steps,
        "batch_pairs": args.batch_size,
    }
    if args.gpu:
        images_per_s = 2 * results["ray_1"]["pairs_per_s"]
        tflop_per_image = (
            2 * args.steps * UNET_FORWARD_TFLOP["sd15"]
        )  # classifier-free guidance: 2 UNet passes
        line["images_per_s"] = round(images_per_s, 2)
        line["mfu_vs_h100_bf16"] = round(images_per_s * tflop_per_image / H100_BF16_PEAK_TFLOPS, 4)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
