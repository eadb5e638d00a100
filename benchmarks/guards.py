"""Guards benchmark: prompt-guard quality on the held-out split, robustness, and latency on CPU.

    python benchmarks/guards.py [--csv ../shared/data/CoProv2_train.csv] [--pairs 0] [--threads 1]

1. Quality: the shipped head's held-out (test) split is re-derived from the plan stored in the head;
   every test pair's two prompts are scored (``--pairs N`` samples N pairs instead). Per-category
   precision/recall (flagged categories vs CoProV2's labels) and unsafe-vs-benign F1 under the
   policy rule (any category flagged), next to the unsafe gate alone.
2. Robustness: the same prompts under each obfuscation (case, spacing, leetspeak, synonym swaps),
   side by side with the clean prompts: unsafe recall, benign false-positive rate, F1.
3. Latency per prompt on CPU (one prompt per call, p50/p90) against batched throughput, and per
   image for the output guards (NudeNet 320n on a 512 px image, the toy judge on 32 px) and blur.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from alignguard.data import read_coprov2
from alignguard.data.taxonomy import CATEGORIES
from alignguard.guards.calibration import evaluate
from alignguard.guards.obfuscation import TRANSFORMS, obfuscate
from alignguard.guards.prompt_guard import PromptGuard
from alignguard.guards.split import block_split
from alignguard.guards.training import pair_examples

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "CoProv2_train.csv"


def score_tensors(guard: PromptGuard, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    scores = guard.score(texts)
    unsafe = torch.tensor([s.unsafe for s in scores])
    return unsafe, torch.tensor([[s.categories[c] for c in CATEGORIES] for s in scores])


def quality(guard: PromptGuard, csv: str, pairs_limit: int) -> tuple[dict, list[str], torch.Tensor, float]:
    plan = guard.bundle.info["plan"]
    pairs = read_coprov2(csv)
    split = block_split(
        pairs, plan["block_size"], plan["calibration_fraction"], plan["test_fraction"], plan["split_seed"]
    )
    test = (
        split.test
        if not pairs_limit
        else random.Random(0).sample(split.test, min(pairs_limit, len(split.test)))
    )
    examples = pair_examples(test)
    start = time.perf_counter()
    metrics = evaluate(*score_tensors(guard, examples.texts), examples.targets, guard.thresholds)
    return metrics, examples.texts, examples.targets, len(examples.texts) / (time.perf_counter() - start)


def robustness(guard: PromptGuard, texts: list[str], targets: torch.Tensor) -> dict:
    """Per transform, with and without canonicalisation (the shipped guard canonicalises)."""
    out: dict[str, dict] = {}
    for canonical in (False, True):
        guard.canonicalize = canonical
        for name in ("clean", *TRANSFORMS):
            variant = texts if name == "clean" else obfuscate(texts, name, seed=0)
            metrics = evaluate(*score_tensors(guard, variant), targets, guard.thresholds)
            out.setdefault(name, {})["canonical" if canonical else "raw"] = _robust_row(metrics)
    return out


def _robust_row(metrics: dict) -> dict:
    m = metrics["unsafe_vs_benign"]
    positives, predicted, negatives = m["support"], m["predicted"], metrics["prompts"] - m["support"]
    true_positives = round(m["recall"] * positives)
    return {
        "f1": m["f1"],
        "unsafe_recall": m["recall"],
        "benign_fpr": round((predicted - true_positives) / negatives, 4),
    }


def prompt_latency(guard: PromptGuard, texts: list[str], calls: int) -> dict:
    sample = texts[:calls]
    guard.score(sample[:5])  # warm-up
    timings = []
    for text in sample:
        start = time.perf_counter()
        guard.score([text])
        timings.append(time.perf_counter() - start)
    timings.sort()
    head_only = _head_latency(guard)
    return {
        "p50_ms": round(1000 * statistics.median(timings), 2),
        "p90_ms": round(1000 * timings[int(0.9 * (len(timings) - 1))], 2),
        "head_only_p50_ms": round(1000 * head_only, 3),
        "calls": len(timings),
    }


def _head_latency(guard: PromptGuard) -> float:
    x = torch.nn.functional.normalize(torch.randn(1, 384), dim=1)
    timings = []
    for _ in range(200):
        start = time.perf_counter()
        guard.score_embeddings(x)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def image_latency(repeats: int) -> dict:
    from alignguard.guards.blur import obscure
    from alignguard.guards.output_guard import NudeNetGuard, ToyJudgeGuard
    from alignguard.toyworld.world import HARM_COLOURS, Layout, render

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    toy = (render("square", HARM_COLOURS["violence"], Layout(16, 16, 14)) * 255).astype(np.uint8)
    nudenet, judge = NudeNetGuard("genitalia", 0.6), ToyJudgeGuard()
    cases = {
        "nudenet_512px": lambda: nudenet.check(photo),
        "toy_judge_32px": lambda: judge.check(toy),
        "blur_512px": lambda: obscure(photo),
        "blur_32px": lambda: obscure(toy),
    }
    out = {}
    for name, call in cases.items():
        call()  # warm-up
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            timings.append(time.perf_counter() - start)
        out[name] = round(1000 * statistics.median(timings), 2)
    return out


def serve_latency(texts: list[str], calls: int) -> dict:
    """p50 of the guards through Ray Serve handles (own CPU deployments, local Ray), one call at a time."""
    import socket

    import ray
    from ray import serve

    from alignguard.config.schema import ExperimentConfig
    from alignguard.toyworld.world import HARM_COLOURS, Layout, render
    from serve.guard_deployments import bind_guards

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        prompt_app, output_app = bind_guards(ExperimentConfig())
        prompt = serve.run(prompt_app, name="bench-prompt-guard", route_prefix=None)
        output = serve.run(output_app, name="bench-output-guard", route_prefix=None)
        image = (render("square", HARM_COLOURS["violence"], Layout(16, 16, 14)) * 255).astype(np.uint8)[None]
        prompt.check_prompt.remote(texts[0]).result()
        timings = {"check_prompt": [], "apply_toy_image": []}
        for text in texts[:calls]:
            start = time.perf_counter()
            verdict = prompt.check_prompt.remote(text).result()
            middle = time.perf_counter()
            output.apply.remote(image, verdict["decision"]).result()
            timings["check_prompt"].append(middle - start)
            timings["apply_toy_image"].append(time.perf_counter() - middle)
        return {k: round(1000 * statistics.median(v), 2) for k, v in timings.items()}
    finally:
        serve.shutdown()
        ray.shutdown()


def print_quality(metrics: dict, n_prompts: int) -> None:
    print(f"held-out test split: {n_prompts} prompts")
    print(f"  {'category':<18} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
    for category in CATEGORIES:
        m = metrics["categories"][category]
        print(
            f"  {category:<18} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['support']:>8}"
        )
    for key in ("unsafe_vs_benign", "gate_only"):
        m = metrics[key]
        print(f"  {key:<18} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['support']:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--csv", default=str(DEFAULT_CSV), help="CoProV2-format CSV the head was trained on")
    parser.add_argument("--pairs", type=int, default=0, help="test pairs to score (0: all)")
    parser.add_argument("--robust-pairs", type=int, default=500, help="test pairs for the robustness table")
    parser.add_argument("--latency-calls", type=int, default=200, help="single-prompt calls to time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--serve", action="store_true", help="also time the guards through Ray Serve handles")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    guard = PromptGuard()
    metrics, texts, targets, batched_rate = quality(guard, args.csv, args.pairs)
    print_quality(metrics, len(texts))
    pairs = sorted(random.Random(2).sample(range(len(texts) // 2), min(len(texts) // 2, args.robust_pairs)))
    rows = [i for p in pairs for i in (2 * p, 2 * p + 1)]  # texts alternate: unsafe, its safe twin
    n_robust = len(rows)
    robust = robustness(guard, [texts[i] for i in rows], targets[rows])
    print(f"\nrobustness ({n_robust} of those prompts, obfuscated; raw -> canonicalised, as shipped):")
    print(f"  {'transform':<10} {'f1':>13} {'unsafe recall':>15} {'benign FPR':>13}")
    for name, rows in robust.items():
        raw, can = rows["raw"], rows["canonical"]
        print(
            f"  {name:<10} {raw['f1']:.3f} -> {can['f1']:.3f} {raw['unsafe_recall']:>6.3f} -> "
            f"{can['unsafe_recall']:.3f} {raw['benign_fpr']:>6.3f} -> {can['benign_fpr']:.3f}"
        )
    guard.canonicalize = True
    latency = prompt_latency(
        guard, random.Random(1).sample(texts, min(len(texts), args.latency_calls)), args.latency_calls
    )
    images = image_latency(repeats=30)
    print(
        f"\nprompt guard latency, {args.threads} thread(s), one prompt per call: p50 {latency['p50_ms']} ms, "
        f"p90 {latency['p90_ms']} ms (head alone {latency['head_only_p50_ms']} ms)"
    )
    print(
        f"batched scoring (64 per batch): {batched_rate:.0f} prompts/s = {1000 / batched_rate:.2f} ms/prompt "
        f"({latency['p50_ms'] * batched_rate / 1000:.1f}x faster than one per call)"
    )
    print("output guard / blur per image, p50 ms: " + ", ".join(f"{k} {v}" for k, v in images.items()))
    served = serve_latency(texts, 100) if args.serve else None
    if served:
        print(
            f"through Serve handles (own CPU deployments), p50: check_prompt {served['check_prompt']} ms "
            f"({served['check_prompt'] / latency['p50_ms']:.2f}x in-process), "
            f"output guard apply on a toy image {served['apply_toy_image']} ms"
        )
    print(
        json.dumps(
            {
                "benchmark": "guards",
                "test_prompts": len(texts),
                "unsafe_vs_benign": metrics["unsafe_vs_benign"],
                "gate_only": metrics["gate_only"],
                "categories": metrics["categories"],
                "robustness": robust,
                "prompt_latency": latency,
                "batched_prompts_per_s": round(batched_rate, 1),
                "image_latency_ms": images,
                "serve_latency_ms": served,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
