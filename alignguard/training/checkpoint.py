"""Pickle-free training state: any nested state dict as safetensors + a JSON skeleton.

Optimizer and scheduler state dicts (torch's, DeepSpeed ZeRO's) are trees of dicts, lists,
tensors, numbers and a few opaque objects (ZeRO's loss scaler, enum values, fragment maps).
``encode_tree`` turns a tree into (tensors, skeleton): every tensor goes to a safetensors file
under a generated name, plain values stay in the JSON skeleton with their container types
(dicts with int keys included), and opaque objects become ``{"__keep__": true}`` markers.
``decode_tree`` rebuilds the tree and takes each kept object from a *fresh* state dict of the
same engine — those objects are derived from config and model, not learned. Nothing here
unpickles anything: a checkpoint is data, never code.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_PLAIN = (int, float, str, bool, type(None))


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
