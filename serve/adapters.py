"""Which LoRA adapters a service may use, found only in the run directory.

A request names an adapter; this module turns the name into an :class:`AdapterPlan` or refuses
it. The names are a closed set: ``merged`` (the Co-Merge output), one category expert, several
experts joined by ``+`` (composed at request time), and ``none`` (the unaligned base model, only
when the operator allows it). Weights come from fixed places in ``run.output_dir``:

- ``merged``: ``<run>/merged/pytorch_lora_weights.safetensors``;
- expert ``c``: ``<run>/experts/<c>/pytorch_lora_weights.safetensors``.

So no request can make a replica open an arbitrary path: a name is checked against the
taxonomy and against what exists before it becomes a path. A stage directory with a
``manifest.json`` must also pass :func:`alignguard.io.stage_status` (sizes and hashes).

When the default adapter's weights are missing (the merge has not run yet) the service runs in
**base-only** mode: requests without an adapter get the base model, and the answers say so.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from alignguard.config.schema import ServeSection
from alignguard.data.taxonomy import CATEGORIES
from alignguard.io import RunDir, stage_status
from alignguard.lora import LORA_WEIGHT_NAME

MERGED = "merged"
NONE = "none"
MAX_NAME_CHARS = 128
_NAME = re.compile(r"^[a-z_]+(\+[a-z_]+)*$")


class AdapterError(ValueError):
    """A request named an adapter it may not use; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # keep the status when the error crosses a process boundary
        return (type(self), (str(self), self.status))


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter's weights in the run directory and whether they can be served."""

    name: str
    kind: str  # "merged" | "expert"
    stage: str  # the stage directory relative to the run directory
    state: str  # "ok" | "missing" | "invalid"
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.state == "ok"

    @property
    def weights(self) -> str:
        return f"{self.stage}/{LORA_WEIGHT_NAME}"


@dataclass(frozen=True)
class AdapterPlan:
    """A resolved adapter: ``experts`` (category names, canonical order) or ``merged`` or none."""

    name: str
    merged: bool = False
    experts: tuple[str, ...] = ()

    @property
    def is_none(self) -> bool:
        return not self.merged and not self.experts


def inspect_stage(run_dir: RunDir, name: str, kind: str, stage: str) -> AdapterInfo:
    """The state of one adapter's stage directory (weights present, manifest valid if any)."""
    weights = f"{stage}/{LORA_WEIGHT_NAME}"
    try:
        if not run_dir.exists(weights):
            return AdapterInfo(name, kind, stage, "missing", f"{run_dir.url(weights)} does not exist")
        status = stage_status(run_dir.sub(stage))
    except OSError as exc:  # an unreachable bucket must not stop the service from starting
        return AdapterInfo(name, kind, stage, "invalid", f"cannot read {run_dir.url(stage)}: {exc}")
    if status.state == "invalid":
        return AdapterInfo(name, kind, stage, "invalid", "; ".join(status.reasons))
    return AdapterInfo(name, kind, stage, "ok")


class AdapterCatalog:
    """The adapters found in a run directory, and the rules for naming them."""

    def __init__(
        self,
        run_uri: str,
        merged: AdapterInfo,
        experts: dict[str, AdapterInfo],
        default: str,
        allow_none: bool,
        max_composed: int,
    ) -> None:
        self.run_uri = run_uri
        self.merged = merged
        self.experts = experts
        self.configured_default = default
        self.allow_none = allow_none
        self.max_composed = max_composed
        self.default = self._resolve_default()

    @classmethod
    def discover(cls, run_uri: str, serve: ServeSection) -> AdapterCatalog:
        """Look at ``run_uri`` once; raises :class:`AdapterError` if the operator requires the
        default adapter and it is not there."""
        run_dir = RunDir(run_uri)
        merged = inspect_stage(run_dir, MERGED, "merged", "merged")
        experts = {c: inspect_stage(run_dir, c, "expert", f"experts/{c}") for c in CATEGORIES}
        catalog = cls(
            run_dir.url(),
            merged,
            experts,
            serve.default_adapter,
            serve.allow_no_adapter,
            serve.limits.max_composed_adapters,
        )
        if serve.require_default_adapter and catalog.base_only:
            raise AdapterError(
                f"serve.require_default_adapter is set but the default adapter "
                f"{serve.default_adapter!r} is not available: {catalog.default_reason}",
                status=503,
            )
        return catalog

    # -- the default adapter ----------------------------------------------------------------

    def _resolve_default(self) -> AdapterPlan:
        try:
            return self.resolve(self.configured_default, explicit=False)
        except AdapterError:
            return AdapterPlan(NONE)  # base-only mode

    @property
    def base_only(self) -> bool:
        """True when the configured default adapter is unavailable and the base model stands in."""
        return self.configured_default != NONE and self.default.is_none

    @property
    def default_reason(self) -> str:
        if not self.base_only:
            return ""
        names = [MERGED] if self.configured_default == MERGED else self.configured_default.split("+")
        infos = [self.merged if n == MERGED else self.experts[n] for n in names]
        return "; ".join(info.reason for info in infos if not info.available)

    # -- resolving request names ------------------------------------------------------------

    def resolve(self, name: str | None, explicit: bool = True) -> AdapterPlan:
        """The plan for a requested adapter name (``None``: the default)."""
        if name is None:
            return self.default
        if len(name) > MAX_NAME_CHARS or not _NAME.match(name):
            raise AdapterError(
                f"adapter must be 'merged', 'none', a category or categories joined by '+' "
                f"(lower case, at most {MAX_NAME_CHARS} characters); got {name[:MAX_NAME_CHARS]!r}"
            )
        if name == NONE:
            if explicit and not self.allow_none:
                raise AdapterError("adapter 'none' (the unaligned base model) is disabled here", status=403)
            return AdapterPlan(NONE)
        if name == MERGED:
            if not self.merged.available:
                raise AdapterError(f"adapter 'merged' is not available: {self.merged.reason}", 404)
            return AdapterPlan(MERGED, merged=True)
        return AdapterPlan(*self._experts(name))

    def _experts(self, name: str) -> tuple[str, bool, tuple[str, ...]]:
        parts = name.split("+")
        unknown = [p for p in parts if p not in self.experts]
        if unknown:
            raise AdapterError(
                f"unknown adapter {unknown[0]!r}; adapters are 'merged', 'none' or categories "
                f"({', '.join(CATEGORIES)}), see GET /v1/adapters",
                status=404,
            )
        if len(set(parts)) != len(parts):
            raise AdapterError(f"adapter {name!r} names an expert twice")
        if len(parts) > self.max_composed:
            raise AdapterError(f"adapter {name!r} composes {len(parts)} experts; at most {self.max_composed}")
        missing = [self.experts[p] for p in parts if not self.experts[p].available]
        if missing:
            raise AdapterError(f"expert {missing[0].name!r} is not available: {missing[0].reason}", 404)
        experts = tuple(c for c in CATEGORIES if c in parts)  # canonical order: one name per set
        return "+".join(experts), False, experts

    def info(self, name: str) -> AdapterInfo:
        return self.merged if name == MERGED else self.experts[name]

    @contextlib.contextmanager
    def local_weights(self, name: str) -> Iterator[str]:
        """A local directory holding the adapter's ``pytorch_lora_weights.safetensors``."""
        info = self.info(name)
        if not info.available:
            raise AdapterError(f"adapter {name!r} is not available: {info.reason}", 404)
        with RunDir(self.run_uri).local_copy_dir(info.stage) as directory:
            yield directory

    def describe(self) -> dict:
        """What ``GET /v1/adapters`` shows."""
        return {
            "run_dir": self.run_uri,
            "default": self.default.name,
            "configured_default": self.configured_default,
            "base_only": self.base_only,
            "base_only_reason": self.default_reason,
            "allow_none": self.allow_none,
            "max_composed": self.max_composed,
            "adapters": [
                {
                    "name": i.name,
                    "kind": i.kind,
                    "available": i.available,
                    "state": i.state,
                    "reason": i.reason,
                }
                for i in (self.merged, *self.experts.values())
            ],
            "composable": [c for c, info in self.experts.items() if info.available],
        }
