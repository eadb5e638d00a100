"""Pickle-free training state: any nested state dict as safetensors + a JSON skeleton.

Optimizer and scheduler state dicts (torch's, DeepSpeed ZeRO's) are trees of dicts, lists,
tensors, numbers and a few opaque objects (ZeRO's loss scaler, enum values, fragment maps).
``encode_tree`` turns a tree into (tensors, skeleton): every tensor goes to a safetensors file
under a generated name, plain values stay in the JSON skeleton with their container types
(dicts with int keys included), and opaque objects become ``{"__keep__": true}`` markers.
``decode_tree`` rebuilds the tree and takes each kept object from a *fresh* state dict of the
same engine — those objects are derived from config and model, not learned. Nothing here
unpickles anything: a checkpoint is data, never code.

An expert's training checkpoint (:func:`save_engine_checkpoint`) is one directory: each rank's
optimizer state as such a tree (``optimizer-rank0000.*``), and from rank 0 the trainable weights
(``trainable.safetensors``) and ``state.json`` (step, metric history, LR scheduler, the engine's
step and sample counters). Ray Train merges the ranks' directories into one checkpoint.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from alignguard.training.engine import TrainingEngine

_PLAIN = (int, float, str, bool, type(None))
STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"


def encode_tree(tree: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``tree`` into tensors (name -> contiguous CPU tensor) and a JSON-able skeleton."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            name = f"t{len(tensors):06d}"
            tensors[name] = node.detach().cpu().contiguous()
            return {"__tensor__": name}
        if isinstance(node, Mapping):
            return {
                "__dict_items__": [
                    [key, encode(value)] for key, value in node.items() if isinstance(key, (int, str))
                ]
            }
        if isinstance(node, (list, tuple)):
            return {"__list__": [encode(value) for value in node], "tuple": isinstance(node, tuple)}
        if isinstance(node, enum.Enum) or not isinstance(node, _PLAIN):
            return {"__keep__": True}
        return node

    return tensors, encode(tree)


def decode_tree(skeleton: Any, tensors: Mapping[str, torch.Tensor], fresh: Any = None) -> Any:
    """Rebuild a tree from :func:`encode_tree`'s output; kept objects come from ``fresh``."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__keep__" in skeleton:
            return fresh
        if "__dict_items__" in skeleton:
            fresh_map = fresh if isinstance(fresh, Mapping) else {}
            return {
                key: decode_tree(value, tensors, fresh_map.get(key))
                for key, value in skeleton["__dict_items__"]
            }
        if "__list__" in skeleton:
            fresh_list = list(fresh) if isinstance(fresh, (list, tuple)) else []
            items = [
                decode_tree(value, tensors, fresh_list[i] if i < len(fresh_list) else None)
                for i, value in enumerate(skeleton["__list__"])
            ]
            return tuple(items) if skeleton.get("tuple") else items
    return skeleton


def save_tree(directory: str | Path, name: str, tree: Any) -> None:
    """Write ``<name>.safetensors`` and ``<name>.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, skeleton = encode_tree(tree)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(skeleton))


def load_tree(directory: str | Path, name: str, fresh: Any = None) -> Any:
    directory = Path(directory)
    tensors = load_file(str(directory / f"{name}.safetensors"))
    skeleton = json.loads((directory / f"{name}.json").read_text())
    return decode_tree(skeleton, tensors, fresh)


def _optimizer_name(rank: int) -> str:
    return f"optimizer-rank{rank:04d}"


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (a LoRA's, or all in full fine-tuning), as CPU tensors."""
    return {name: p.detach().cpu().contiguous() for name, p in module.named_parameters() if p.requires_grad}


def save_engine_checkpoint(
    directory: str | Path, engine: TrainingEngine, rank: int, step: int, history: list[dict]
) -> None:
    """This rank's part of the checkpoint after ``step`` optimizer steps (see the module doc)."""
    save_tree(directory, _optimizer_name(rank), engine.optimizer.state_dict())
    if rank == 0:
        save_file(trainable_state(engine.module), str(Path(directory, TRAINABLE_FILE)))
        scheduler = engine.lr_scheduler.state_dict() if engine.lr_scheduler else {}
        meta = {
            "step": step,
            "history": history,
            "scheduler": scheduler,
            "global_steps": engine.global_steps,
            "global_samples": engine.global_samples,
        }
        Path(directory, STATE_FILE).write_text(json.dumps(meta))


def load_engine_checkpoint(
    directory: str | Path, engine: TrainingEngine, rank: int
) -> tuple[int, list[dict]]:
    """Restore ``engine`` from :func:`save_engine_checkpoint`'s directory: (steps done, history)."""
    trainable = load_file(str(Path(directory, TRAINABLE_FILE)))
    params = dict(engine.module.named_parameters())
    with torch.no_grad():
        for name, tensor in trainable.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer_state = load_tree(directory, _optimizer_name(rank), fresh=engine.optimizer.state_dict())
    engine.optimizer.load_state_dict(optimizer_state)
    meta = json.loads(Path(directory, STATE_FILE).read_text())
    if engine.lr_scheduler and meta["scheduler"]:
        engine.lr_scheduler.load_state_dict(meta["scheduler"])
    engine.global_steps, engine.global_samples = meta["global_steps"], meta["global_samples"]
    return int(meta["step"]), list(meta["history"])
