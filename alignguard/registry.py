"""Plug-ins by name: the model families that ``model.family`` may name.

A registry maps a name to an object or to the dotted path ``"package.module:attribute"`` of one,
imported on first use (as ``transformers``' auto classes name their models). The path form is what
lets :mod:`alignguard.config` check a name against the registry without importing the plug-ins,
which themselves import the config: this module imports nothing from ``alignguard``.
"""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownPluginError(KeyError):
    """A name no plug-in is registered under; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """Named plug-ins of one ``kind`` (for messages, e.g. ``"model family"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, plugin: T | str, replace: bool = False) -> None:
        """Register ``plugin`` (or the dotted path ``"module:attribute"`` of one) as ``name``."""
        if name in self._entries and not replace:
            raise ValueError(f"a {self.kind} named {name!r} is already registered (pass replace=True)")
        self._entries[name] = plugin

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        """The plug-in registered as ``name`` (imported now if it was registered by path)."""
        if name not in self._entries:
            raise UnknownPluginError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]


MODEL_FAMILIES: Registry = Registry("model family")
MODEL_FAMILIES.register("toy", "alignguard.families.toy:TOY")
MODEL_FAMILIES.register("sd15", "alignguard.families.sd:SD15")
MODEL_FAMILIES.register("sd21", "alignguard.families.sd:SD21")
MODEL_FAMILIES.register("sdxl", "alignguard.families.sdxl:SDXL")
