"""``alignguard serve`` as a user runs it: a private Ray instance, the toy model in base-only mode
(no merged LoRA yet), real HTTP, then SIGTERM with a request in flight: it drains and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from serve_support import free_port

pytestmark = pytest.mark.slow


def wait_for(url: str, deadline_s: float, process: subprocess.Popen) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"alignguard serve exited early with {process.returncode}")
        try:
            response = requests.get(url, timeout=5)
            if response.status_code == 200:
                return response.json()
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise AssertionError(f"{url} did not answer within {deadline_s} s")


def test_serve_command_runs_base_only_and_stops_gracefully_on_sigterm(repo, tmp_path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "jobs.cli",
        "serve",
        "--config",
        "configs/toy.yaml",
        "--port",
        str(port),
        "--address",
        "local",
        f"run.output_dir={tmp_path / 'no-run-yet'}",
        "serve.ingress.num_cpus=0.1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""}
    process = subprocess.Popen(
        command,
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: signals reach only what this test started
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{port}"
        health = wait_for(url + "/healthz", 180, process)
        assert health["base_only"] is True and health["default_adapter"] == "none"
        adapters = requests.get(url + "/v1/adapters", timeout=30).json()
        assert (
            adapters["base_only"]
            and "merged/pytorch_lora_weights.safetensors" in adapters["base_only_reason"]
        )
        in_flight: dict = {}
        body = {"prompt": "a red bar", "num_images": 4, "steps": 40, "width": 64, "height": 64}
        client = threading.Thread(
            target=lambda: in_flight.update(r=requests.post(url + "/v1/generate", json=body, timeout=60))
        )
        client.start()
        time.sleep(0.3)
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=90)
        client.join(timeout=60)
        reader.join(timeout=10)
        text = "".join(output)
        assert code == 0, text[-3000:]
        assert "stopping: draining in-flight requests" in text and "stopped in" in text
        assert time.monotonic() - start < 60
        answer = in_flight["r"].json()
        assert in_flight["r"].status_code == 200 and answer["base_only"] and answer["aligned"] is False
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # only this test's own process group
            process.wait(timeout=30)
