"""Test helpers that act on the Ray cluster this test session started, and nothing else."""

from __future__ import annotations

import os
import signal

import ray
from local_head import process_table


def our_worker_pids(title_fragment: str) -> list[int]:
    """PIDs of Ray worker processes of OUR local cluster whose title contains ``title_fragment``.

    Workers are children of the raylet; matching on our raylet's PID keeps other Ray clusters on
    the same host (other sessions, other developers) out of reach.
    """
    raylets = {info.process.pid for info in ray._private.worker._global_node.all_processes["raylet"]}
    return [
        pid
        for pid, (parent, cmdline) in process_table().items()
        if parent in raylets and title_fragment in cmdline
    ]


def kill_workers(title_fragment: str) -> list[int]:
    """SIGKILL our workers whose title contains ``title_fragment``; returns their PIDs."""
    pids = our_worker_pids(title_fragment)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids
