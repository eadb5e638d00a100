"""``alignguard doctor``: check that the stack works here, on Ray, before a long job.

It reports package versions and devices, starts (or joins) Ray, renders the same prompt
with a tiny random-weight SD pipeline on the driver and in a Ray task on every node, and
checks that the images are identical: the same code, the same seed, the same pixels.
"""

from __future__ import annotations

import platform
import socket
import time

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from alignguard.io import package_versions
from cluster.runtime import init_ray

PROMPT = "a red cat on a street"


def render_tiny(seed: int = 0) -> np.ndarray:
    from alignguard.models import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        PROMPT, num_inference_steps=4, generator=generator, height=32, width=32, output_type="np"
    ).images[0]


def node_report() -> dict:
    """What one node sees, and its tiny render."""
    return {
        "host": socket.gethostname(),
        "cuda_devices": torch.cuda.device_count(),
        "image": render_tiny(),
    }


def run_doctor() -> int:
    """Print a report; returns 0 when every check passes, 1 otherwise."""
    print("versions:", ", ".join(f"{k} {v}" for k, v in package_versions().items()))
    cuda = f"{torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else "none"
    print(f"machine:  {platform.machine()}, torch threads {torch.get_num_threads()}, CUDA {cuda}")
    start = time.perf_counter()
    init_ray()
    resources = ray.cluster_resources()
    print(
        f"ray:      {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs, "
        f"{resources.get('GPU', 0):g} GPUs (connected in {time.perf_counter() - start:.1f} s)"
    )
    reference = render_tiny()
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    remote = ray.remote(num_cpus=0.5)(node_report)
    tasks = [
        remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
        for node in nodes
    ]
    ok = True
    for report in ray.get(tasks):
        same = np.allclose(report["image"], reference, atol=1e-5)
        ok &= same
        print(
            f"node {report['host']}: {report['cuda_devices']} CUDA device(s), tiny SD render "
            f"{'matches the driver' if same else 'DIFFERS from the driver'}"
        )
    print("doctor: all checks passed" if ok else "doctor: some checks FAILED")
    return 0 if ok else 1
