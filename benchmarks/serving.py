"""Serving benchmark: the guarded generation service on Ray Serve, on loopback, side by side.

    python benchmarks/serving.py [--run RUN_DIR] [--requests 32] [--repeats 40]

1. **Fused merged LoRA vs the base model** (in process, one torch thread, interleaved repeats,
   medians): the base pipeline, the pipeline with the merged LoRA fused (the service's default
   path), the same with other adapters resident but disabled (after a non-default request), and
   the LoRA unfused. Goal: fused / base <= 1.02. Without ``<RUN_DIR>/merged`` a random LoRA is
   fused instead (the JSON says ``merged_source: random``): the cost does not depend on values.
2. **Throughput and latency** through Serve over HTTP (a bounded closed-loop load generator:
   ``c`` clients, each sending its share of ``--requests x c`` requests one after another) at
   concurrency 1, 4 and 16, with batching (``max_batch_size`` 16) and without (1).
3. **Serve's HTTP overhead**: the same request alternately in process (the generator's engine
   call + PNG encoding) and over HTTP to the app without batching (no batch wait); p50 of each.

Ends with one JSON line. Uses a private local Ray instance and a free port outside 10002-19999.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: this checkout's code
# Random-LoRA run directories and free ports come from the tests' support module: scaffolding, not
# the product.
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np
import torch

from alignguard.generation import generate
from alignguard.lora import LORA_WEIGHT_NAME
from alignguard.toyworld.prompts import benign_prompts
from alignguard.toyworld.store import load_toy_pipeline

CONCURRENCY = (1, 4, 16)
STEPS, GUIDANCE = 10, 5.0


def merged_run_dir(run: str | None, scratch: Path) -> tuple[Path, str]:
    """The run directory to serve, and where its merged LoRA came from."""
    if run and (Path(run) / "merged" / LORA_WEIGHT_NAME).exists():
        return Path(run), "trained"
    from serve_support import random_run_dir

    return random_run_dir(scratch / "run", experts=["hate"]), "random"


# -- 1. fused vs base, in process ----------------------------------------------------------------


def lora_variants(run: Path) -> dict:
    """Four pipelines: base, fused merged, fused + resident (disabled) adapters, unfused merged."""
    weights = str(run / "merged")
    base = load_toy_pipeline()
    fused = load_toy_pipeline()
    fused.load_lora_weights(weights, weight_name=LORA_WEIGHT_NAME, adapter_name="m")
    fused.fuse_lora(adapter_names=["m"], lora_scale=1.0)
    fused.unload_lora_weights()
    resident = load_toy_pipeline()
    resident.load_lora_weights(weights, weight_name=LORA_WEIGHT_NAME, adapter_name="m")
    resident.fuse_lora(adapter_names=["m"], lora_scale=1.0)
    resident.unload_lora_weights()
    resident.load_lora_weights(weights, weight_name=LORA_WEIGHT_NAME, adapter_name="merged")
    resident.disable_lora()
    unfused = load_toy_pipeline()
    unfused.load_lora_weights(weights, weight_name=LORA_WEIGHT_NAME, adapter_name="merged")
    return {"base": base, "fused": fused, "fused_resident": resident, "unfused": unfused}


def time_variants(pipes: dict, repeats: int, batch: int) -> dict[str, float]:
    """Median seconds per ``generate`` call of ``batch`` images, variants interleaved per repeat."""
    prompts, seeds = benign_prompts(batch, seed=3), list(range(batch))
    timings: dict[str, list[float]] = {name: [] for name in pipes}
    for pipe in pipes.values():
        generate(pipe, prompts, seeds, STEPS, GUIDANCE, batch)  # warm-up
    for _ in range(repeats):
        for name, pipe in pipes.items():
            start = time.perf_counter()
            generate(pipe, prompts, seeds, STEPS, GUIDANCE, batch)
            timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


def direct_engine(run: Path):
    """The generator's engine, in this process: what a request costs without Serve."""
    from alignguard.config import load_config
    from serve.adapters import AdapterCatalog
    from serve.engine import Engine, Job

    serve_cfg = load_config("configs/toy.yaml", [f"run.output_dir={run}"]).serve
    engine = Engine(load_toy_pipeline(), AdapterCatalog.discover(str(run), serve_cfg))
    engine.run([Job("a red bar", 0)])  # warm-up
    return engine


def direct_request(engine, prompt: str, seed: int) -> float:
    """Seconds for one request's work without Serve: the engine call plus PNG encoding."""
    from serve.encoding import encode_images
    from serve.engine import Job

    start = time.perf_counter()
    result = engine.run([Job(prompt, seed, steps=STEPS, guidance=GUIDANCE)])[0]
    encode_images(result.images, "png")
    return time.perf_counter() - start


def http_overhead(url: str, engine, repeats: int) -> tuple[float, float]:
    """p50 seconds of the same request in process and over HTTP, interleaved (same load)."""
    import requests

    session, direct, http = requests.Session(), [], []
    for i, prompt in enumerate(benign_prompts(repeats, seed=5)):
        direct.append(direct_request(engine, prompt, i))
        start = time.perf_counter()
        session.post(url, json={"prompt": prompt, "seed": i}, timeout=120).raise_for_status()
        http.append(time.perf_counter() - start)
    return statistics.median(direct), statistics.median(http)


# -- 2. load over HTTP ---------------------------------------------------------------------------


def deploy(run: Path, port: int, batch: int) -> str:
    from ray import serve

    from serve.app import build_application, http_options, service_config

    config = service_config(
        "configs/toy.yaml",
        [
            f"run.output_dir={run}",
            f"serve.max_batch_size={batch}",
            "serve.limits.max_images=1",
            "serve.max_ongoing_requests=32",
            "serve.max_queued_requests=64",
            "serve.batch_wait_timeout_s=0.02",
            "serve.ingress.num_cpus=0.5",
        ],
    )
    serve.start(http_options=http_options(config, port))
    serve.run(build_application(config), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}/v1/generate"


def load_level(url: str, clients: int, per_client: int) -> dict:
    """``clients`` closed-loop clients, ``per_client`` requests each; throughput and latency."""
    import requests

    def client(index: int) -> list[tuple[float, dict]]:
        session, samples = requests.Session(), []
        for k in range(per_client):
            body = {"prompt": f"a painted blue {'bar' if k % 2 else 'square'}", "seed": index * 1000 + k}
            start = time.perf_counter()
            response = session.post(url, json=body, timeout=120)
            seconds = time.perf_counter() - start
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            samples.append((seconds, response.json()["timings"]))
        return samples

    with ThreadPoolExecutor(clients) as pool:  # warm-up: one request per client
        list(pool.map(lambda i: client_warm(url, i), range(clients)))
        start = time.perf_counter()
        samples = [x for result in pool.map(client, range(clients)) for x in result]
        wall = time.perf_counter() - start
    ms = np.asarray([seconds for seconds, _ in samples]) * 1000

    def mean_ms(key: str) -> float:
        return round(float(np.mean([timings.get(key, 0.0) for _, timings in samples])) * 1000, 1)

    return {
        "requests": len(samples),
        "images_per_s": round(len(samples) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "mean_batch": round(float(np.mean([timings["batch_images"] for _, timings in samples])), 1),
        # where a request's time goes (means): ingress -> generator, waiting there, generating
        "mean_generate_ms": mean_ms("generate_s"),
        "mean_to_generator_ms": mean_ms("to_generator_s"),
        "mean_pending_ms": mean_ms("pending_s"),
        "mean_ingress_total_ms": mean_ms("total_s"),
    }


def client_warm(url: str, index: int) -> None:
    import requests

    requests.post(url, json={"prompt": "a red bar", "seed": index}, timeout=120).raise_for_status()


def serve_levels(run: Path, port: int, per_client: int, engine, repeats: int) -> dict:
    results: dict = {}
    for label, batch in (("batching", 16), ("no_batching", 1)):
        url = deploy(run, port, batch)
        results[label] = {str(c): load_level(url, c, per_client) for c in CONCURRENCY}
    print_serving(results)
    direct, http = http_overhead(url, engine, repeats)  # the no-batching app: no batch wait
    results["overhead"] = {"direct_ms": round(direct * 1000, 1), "http_ms": round(http * 1000, 1)}
    print(f"one request, p50: {direct * 1e3:.1f} ms in process, {http * 1e3:.1f} ms over HTTP (interleaved)")
    return results


def print_serving(results: dict) -> None:
    print("  (mean batch: images per pipeline call; gen: its mean duration)")
    print("  clients | batching: img/s  p50 ms  p99 ms  batch  gen ms | no batching: img/s  p50 ms  p99 ms")
    for c in map(str, CONCURRENCY):
        on, off = results["batching"][c], results["no_batching"][c]
        print(
            f"  {c:>7} | {on['images_per_s']:15.1f} {on['p50_ms']:7.0f} {on['p99_ms']:7.0f}"
            f" {on['mean_batch']:6.1f} {on['mean_generate_ms']:7.0f} | {off['images_per_s']:18.1f}"
            f" {off['p50_ms']:7.0f} {off['p99_ms']:7.0f}"
        )


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", help="run directory with merged/ (default: a random LoRA)")
    parser.add_argument("--requests", type=int, default=32, help="requests per client per level")
    parser.add_argument("--repeats", type=int, default=40, help="in-process repeats per variant")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        run, source = merged_run_dir(args.run, Path(scratch))
        print(f"merged LoRA: {source} ({run})", flush=True)
        single = time_variants(lora_variants(run), args.repeats, batch=1)
        batched = time_variants(lora_variants(run), max(4, args.repeats // 4), batch=16)
        print_variants(single, batched)
        serving = run_serving(run, args.requests, direct_engine(run), args.repeats)
    overhead = serving.pop("overhead")
    summary = {
        "merged_source": source,
        "fused_over_base": {
            "batch1": round(single["fused"] / single["base"], 3),
            "batch16": round(batched["fused"] / batched["base"], 3),
        },
        "fused_resident_over_base": round(single["fused_resident"] / single["base"], 3),
        "unfused_over_base": round(single["unfused"] / single["base"], 3),
        "direct_request_ms": overhead["direct_ms"],
        "http_request_ms": overhead["http_ms"],
        "http_overhead_ms": round(overhead["http_ms"] - overhead["direct_ms"], 1),
        "serve": serving,
        "batching_speedup": {
            c: round(serving["batching"][c]["images_per_s"] / serving["no_batching"][c]["images_per_s"], 2)
            for c in map(str, CONCURRENCY)
        },
        "steps": STEPS,
        "size": 32,
    }
    print(json.dumps(summary))


def print_variants(single: dict, batched: dict) -> None:
    print("in process, 1 thread, median per generate call (ratio to base):")
    for name in single:
        print(
            f"  {name:<15} batch 1: {single[name] * 1000:6.1f} ms ({single[name] / single['base']:.3f}x)"
            f"   batch 16: {batched[name] * 1000:7.1f} ms ({batched[name] / batched['base']:.3f}x)"
        )


def run_serving(run: Path, per_client: int, engine, repeats: int) -> dict:
    import ray
    from ray import serve
    from serve_support import free_port

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}},
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        print("through Serve over HTTP (32 px, 10 steps, 1 image per request):", flush=True)
        return serve_levels(run, free_port(), per_client, engine, repeats)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
