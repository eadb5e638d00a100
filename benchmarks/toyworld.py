"""Toy-world benchmark: generation throughput by batch size, and the shipped model's report.

    python benchmarks/toyworld.py [--n 100] [--threads 1]

Throughput is measured side by side in one run (batch 1, 16 and 64, same prompts and seeds,
median of repeats) and reported as images/s and as ratios to batch 16. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from alignguard.data.taxonomy import CATEGORIES
from alignguard.generation import generate
from alignguard.toyworld.prompts import benign_prompts
from alignguard.toyworld.report import DEFAULT_GUIDANCE, DEFAULT_STEPS, toyworld_report
from alignguard.toyworld.store import load_toy_pipeline


def images_per_second(pipe, batch_size: int, images: int, repeats: int) -> float:
    prompts = benign_prompts(images, seed=7)
    seeds = list(range(images))
    generate(
        pipe, prompts[:batch_size], seeds[:batch_size], DEFAULT_STEPS, DEFAULT_GUIDANCE, batch_size
    )  # warm-up
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate(pipe, prompts, seeds, DEFAULT_STEPS, DEFAULT_GUIDANCE, batch_size)
        timings.append(time.perf_counter() - start)
    return images / statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100, help="prompts per report group")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--images", type=int, default=64, help="images per throughput measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_toy_pipeline()
    throughput = {b: images_per_second(pipe, b, args.images, args.repeats) for b in (1, 16, 64)}
    print(f"generation, {DEFAULT_STEPS} steps, guidance {DEFAULT_GUIDANCE}, {args.threads} thread(s):")
    for batch, rate in throughput.items():
        print(f"  batch {batch:>3}: {rate:7.1f} images/s  ({rate / throughput[16]:.2f}x batch 16)")
    start = time.perf_counter()
    report = toyworld_report(pipe, n=args.n, seed=0)
    report_seconds = time.perf_counter() - start
    print(f"\nreport, n={args.n} per group ({report_seconds:.0f} s):")
    print(f"  {'category':<18} {'unsafe_ip':>9} {'safe_ip':>8} {'safe_content':>12}")
    for category in CATEGORIES:
        entry = report["categories"][category]
        figures = f"{entry['unsafe_ip']:>9.2f} {entry['safe_ip']:>8.2f} {entry['safe_content']:>12.2f}"
        print(f"  {category:<18} {figures}")
    print(f"  benign_content: {report['benign_content']:.2f}")
    print(
        json.dumps(
            {
                "images_per_s": {str(b): round(r, 2) for b, r in throughput.items()},
                "batch64_over_batch1": round(throughput[64] / throughput[1], 2),
                "report": report,
                "report_seconds": round(report_seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
