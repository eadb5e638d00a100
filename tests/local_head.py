"""A private ``ray start --head`` for tests: loopback, its own temp dir and ports, stopped alone.

``ray stop`` kills every Ray process on the host (other sessions, other developers): never call
it. :meth:`LocalHead.stop` ends only the processes of THIS head — those whose command line names
its temp dir (GCS, raylet, dashboard, agents, log monitor) and all their descendants (workers
rename themselves ``ray::...`` and lose the temp dir from their command line, but they are the
raylet's children; a job's driver is a child of its supervisor actor).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# Outside Ray's default worker range (10002-19999, other clusters on this host) and below Linux's
# ephemeral range (32768+), so neither other clusters nor outgoing connections take our ports.
WORKER_PORT_SPAN = (20000, 32000)


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for the ``ray`` CLI: token auth on (Ray 2.60's default cluster needs it), no
    inherited ``RAY_ADDRESS`` pointing at someone else's cluster, and this interpreter's bin
    first on PATH: a job's ``python`` entrypoint is looked up in the head's PATH."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(RAY_AUTH_MODE="token", OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


class LocalHead:
    """One head node on 127.0.0.1 with ``num_cpus`` logical CPUs and a dashboard (the job API)."""

    def __init__(self, num_cpus: int = 2) -> None:
        self.num_cpus = num_cpus
        # Short path: Unix socket paths under the temp dir must stay under ~107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="agray-", dir="/tmp")
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        low = random.randrange(WORKER_PORT_SPAN[0], WORKER_PORT_SPAN[1] - 300, 100)
        self.worker_ports = (low, low + 299)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_command(self) -> list[str]:
        return [
            RAY,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            f"--temp-dir={self.temp_dir}",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--min-worker-port={self.worker_ports[0]}",
            f"--max-worker-port={self.worker_ports[1]}",
            "--disable-usage-stats",
        ]

    def start(self, timeout_s: float = 120.0) -> None:
        result = subprocess.run(
            self.start_command(), env=cli_env(), capture_output=True, text=True, timeout=timeout_s
        )
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    def pids(self) -> list[int]:
        """Our head's processes and all their descendants."""
        table = process_table()
        roots = {pid for pid, (_, cmdline) in table.items() if self.temp_dir in cmdline}
        children: dict[int, list[int]] = {}
        for pid, (parent, _) in table.items():
            children.setdefault(parent, []).append(pid)
        found, stack = set(), list(roots)
        while stack:
            pid = stack.pop()
            if pid not in found and pid != os.getpid():
                found.add(pid)
                stack += children.get(pid, [])
        return sorted(found)

    def stop(self, grace_s: float = 5.0) -> list[int]:
        """SIGTERM our processes, SIGKILL what is left after ``grace_s`` (the GCS server and the
        autoscaler monitor ignore SIGTERM here); remove the temp dir."""
        pids = self.pids()
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)
        _signal_all([pid for pid in pids if _alive(pid)], signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return pids


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process we can read."""
    table = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(proc.name)] = (int(status.split("PPid:")[1].split()[0]), cmdline)
    return table


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing
