"""``<run>/eval/report.md``: tables first (a person reads it at a glance), then pictures, what was
skipped, and every pinned setting (versions, thresholds, seeds, prompt-set hashes).

:func:`build_report` turns ``metrics.json``'s content (plus the grid images) into files:
``report.md``, ``plots/*.png`` and ``grids/<set>/<model>.png``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from alignguard.data.taxonomy import CATEGORIES
from alignguard.evaluation import plots

MERGE_KINDS = ("merged", "baseline", "all_single")


def fmt_share(share: dict | None) -> str:
    """``12.5 [6.2, 23.1]``: percent with the 95 % interval; ``—`` when absent."""
    if not share or share.get("value") is None:
        return "—"
    low, high = share["ci"]
    return f"{100 * share['value']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def fmt_mean(entry: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if not entry or entry.get("value") is None:
        return "—"
    low, high = entry["ci"]
    return f"{scale * entry['value']:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _toy_tables(name: str, results: dict, kinds: dict) -> list[str]:
    header = [
        "model",
        "kind",
        "unsafe IP (own category)",
        "unsafe IP (any)",
        "safe IP",
        "over-blocking: safe twins",
        "over-blocking: benign",
        "safe content",
        "benign content",
    ]
    rows = []
    for model, sets in results.items():
        m = sets.get(name)
        if m is None:
            continue
        ob = m.get("overblocking", {})
        rows.append(
            [
                f"`{model}`",
                kinds[model],
                fmt_share(m["unsafe_ip"]),
                fmt_share(m["unsafe_any_ip"]),
                fmt_share(m["safe_ip"]),
                fmt_share(ob.get("safe")),
                fmt_share(ob.get("benign")),
                fmt_share(m["safe_content"]),
                fmt_share(m["benign_content"]),
            ]
        )
    per_category = []
    for model, sets in results.items():
        if name in sets:
            cats = sets[name]["categories"]
            per_category.append(
                [f"`{model}`", *(fmt_share(cats.get(c, {}).get("unsafe_ip")) for c in CATEGORIES)]
            )
    return [
        f"## `{name}` (toy world, exact judge): summary",
        "",
        "Percent, 95 % Wilson interval in brackets. Over-blocking: images whose judged content or layout "
        "differs from the base model's image of the same prompt and seed (1 − preserved).",
        "",
        *_table(header, rows),
        "",
        f"## `{name}`: unsafe IP per category (%)",
        "",
        *_table(["model", *CATEGORIES], per_category),
        "",
    ]


def _real_tables(name: str, results: dict, kinds: dict, change_threshold: float) -> list[str]:
    header = [
        "model",
        "kind",
        "IP (unsafe)",
        "NudeNet",
        "Q16",
        "IP (safe)",
        "over-blocking (safe)",
        "over-blocking (benign)",
        "CLIPScore",
        "FID",
    ]
    rows, per_category = [], []
    for model, sets in results.items():
        m = sets.get(name)
        if m is None:
            continue
        unsafe, safe, benign = m.get("unsafe", {}), m.get("safe", {}), m.get("benign", {})
        ob = m.get("overblocking", {})
        clip = (benign or safe or unsafe).get("clip_score")
        fid = m.get("fid", {}).get("value")
        rows.append(
            [
                f"`{model}`",
                kinds[model],
                fmt_share(unsafe.get("ip")),
                fmt_share(unsafe.get("nudenet")),
                fmt_share(unsafe.get("q16")),
                fmt_share(safe.get("ip")),
                fmt_share(ob.get("safe")),
                fmt_share(ob.get("benign")),
                fmt_mean(clip),
                "—" if fid is None else f"{fid:.2f}",
            ]
        )
        if unsafe.get("ip_by_category"):
            cats = unsafe["ip_by_category"]
            per_category.append([f"`{model}`", *(fmt_share(cats.get(c)) for c in CATEGORIES)])
    lines = [
        f"## `{name}`: summary",
        "",
        f"Percent, 95 % Wilson interval in brackets. Over-blocking: images whose mean absolute pixel "
        f"difference from the base image (same prompt and seed) exceeds {change_threshold}. CLIPScore on "
        "benign (else safe) prompts, mean [95 % CI].",
        "",
        *_table(header, rows),
        "",
    ]
    if per_category:
        lines += [f"## `{name}`: IP per category (%)", "", *_table(["model", *CATEGORIES], per_category), ""]
    return lines


def render_markdown(metrics: dict) -> str:
    kinds = {name: info["kind"] for name, info in metrics["models"].items()}
    settings = metrics["settings"]
    generation = metrics["generation"]
    lines = [
        f"# Evaluation: `{metrics['run_name']}`",
        "",
        f"{len(metrics['models'])} models on {len(metrics['prompt_sets'])} prompt set(s), the same "
        f"prompts and seeds for every model ({generation['steps']} steps, "
        f"guidance {generation['guidance']}). "
        f"IP = {settings['ip_definition']}. Written {metrics['created_at']}.",
        "",
    ]
    for name, info in metrics["prompt_sets"].items():
        if info["format"] == "toyworld":
            lines += _toy_tables(name, metrics["results"], kinds)
        else:
            lines += _real_tables(name, metrics["results"], kinds, generation["change_threshold"])
    lines += _pictures(metrics) + _skipped(metrics) + _settings(metrics)
    return "\n".join(lines) + "\n"


def _pictures(metrics: dict) -> list[str]:
    files = metrics.get("files", {})
    lines = ["## Plots", ""]
    lines += [f"![{path}]({path})" for path in files.get("plots", [])] or [
        "(none: not enough models or metrics)"
    ]
    lines += ["", "## Image grids (base row above the model's row: same prompt, same seed)", ""]
    lines += [f"- [{path}]({path})" for path in files.get("grids", [])] or ["(none)"]
    return [*lines, ""]


def _skipped(metrics: dict) -> list[str]:
    lines = ["## Skipped", ""]
    models = metrics["skipped_models"]
    lines += (
        _table(["model", "kind", "reason"], [[f"`{m['name']}`", m["kind"], m["reason"]] for m in models])
        if models
        else ["No model skipped."]
    )
    lines.append("")
    evaluators = metrics["skipped_evaluators"]
    lines += (
        _table(["evaluator", "reason"], [[e["name"], e["reason"]] for e in evaluators])
        if evaluators
        else ["No evaluator skipped."]
    )
    return [*lines, ""]


def _settings(metrics: dict) -> list[str]:
    s, g = metrics["settings"], metrics["generation"]
    lines = [
        "## Settings (pinned)",
        "",
        f"- model: `{g['model']['family']}` `{g['model']['path']}`; {g['steps']} steps, "
        f"guidance {g['guidance']}, "
        f"seeds: prompt i of a group uses {g['seed']} + i"
        + (" (the set's own seed where it has one)" if g["use_prompt_seeds"] else "")
        + f"; shard / generator batch {g['batch_size']}",
        f"- IP: {s['ip_definition']}",
        f"- NudeNet: {s['nudenet']['detector']}, class set `{s['nudenet']['class_set']}` = "
        f"{', '.join(s['nudenet']['classes']) or '(off)'}; threshold {s['nudenet']['threshold']}",
        f"- Q16: prompts `{s['q16']['prompts']}`, CLIP `{s['q16']['clip']}`, "
        f"threshold {s['q16']['threshold']}",
        f"- CLIPScore: CLIP `{s['clipscore']['clip']}`, {s['clipscore']['formula']}",
        f"- FID: Inception `{s['fid']['inception']}`, {s['fid']['dims']} dims, "
        f"reference: {s['fid']['reference']}; "
        f"{s['fid']['sqrtm']}",
        f"- toy judge: harm threshold {s['toy_judge']['harm_threshold']}, layout tolerance "
        f"{s['toy_judge']['layout_tolerance_px']} px",
        f"- over-blocking: toy: {s['overblocking']['toy']}; real: {s['overblocking']['real']}",
        f"- intervals: {s['confidence']}",
        f"- code: git `{metrics['git_sha']}`; versions: "
        + ", ".join(f"{k} {v}" for k, v in metrics["versions"].items()),
        "",
        "Prompt sets:",
        "",
    ]
    rows = [
        [
            f"`{name}`",
            info["format"],
            str(info["records"]),
            f"`{info['sha256'][:16]}`",
            f"`{(info.get('file_sha256') or '—')[:16]}`",
            str(info.get("path") or "—"),
        ]
        for name, info in metrics["prompt_sets"].items()
    ]
    lines += _table(["set", "format", "images per model", "records sha256", "file sha256", "path"], rows)
    models = [
        [f"`{name}`", info["kind"], f"`{info['lora'] or '—'}`", f"`{(info['sha256'] or '—')[:16]}`"]
        for name, info in metrics["models"].items()
    ]
    lines += ["", "Models:", "", *_table(["model", "kind", "LoRA", "sha256"], models)]
    return [*lines, ""]


# ---- plots -------------------------------------------------------------------------------------


def _ip_shares(metrics: dict, set_name: str, model: str) -> dict[str, dict]:
    result = metrics["results"].get(model, {}).get(set_name)
    if result is None:
        return {}
    if "categories" in result:  # toy
        return {c: e["unsafe_ip"] for c, e in result["categories"].items()}
    return result.get("unsafe", {}).get("ip_by_category", {})


def _pooled_ip(result: dict) -> dict | None:
    return result.get("unsafe_ip") or result.get("unsafe", {}).get("ip")


def _overblocking(result: dict) -> dict | None:
    ob = result.get("overblocking", {})
    return ob.get("safe") or ob.get("benign")


def build_plots(metrics: dict) -> dict[str, bytes]:
    """``plots/<name>.png`` per prompt set with IP: before/after per category, merge variants
    compared, safety against quality."""
    files = {}
    kinds = {name: info["kind"] for name, info in metrics["models"].items()}
    for set_name in metrics["prompt_sets"]:
        series = {}
        for label in ("base", "merged", "all_single"):
            if label in kinds and _ip_shares(metrics, set_name, label):
                series[label] = _ip_shares(metrics, set_name, label)
        own = {c: _ip_shares(metrics, set_name, c).get(c) for c in CATEGORIES if kinds.get(c) == "expert"}
        if any(own.values()):
            series["own expert"] = {c: s for c, s in own.items() if s}
        if len(series) >= 2:
            title = f"{set_name}: IP per category, before (base) and after"
            files[f"plots/ip_per_category_{set_name}.png"] = plots.ip_per_category_plot(series, title)
        variants = {
            m: (_pooled_ip(r[set_name]), _overblocking(r[set_name]))
            for m, r in metrics["results"].items()
            if kinds[m] in (*MERGE_KINDS, "base") and set_name in r
        }
        if len(variants) >= 2 and any(v[0] for v in variants.values()):
            files[f"plots/merge_strategies_{set_name}.png"] = plots.merge_strategies_plot(
                variants, f"{set_name}: merge strategies (and base, all_single)"
            )
        points = _safety_quality_points(metrics, set_name, kinds)
        if len(points[0]) >= 2:
            files[f"plots/safety_vs_quality_{set_name}.png"] = plots.safety_quality_plot(
                *points, f"{set_name}: safety against quality"
            )
    return files


def _safety_quality_points(metrics: dict, set_name: str, kinds: dict) -> tuple[dict, str, str]:
    points = {}
    y_label = ""
    for model, sets in metrics["results"].items():
        result = sets.get(set_name)
        ip = _pooled_ip(result) if result else None
        if not ip or ip["value"] is None:
            continue
        if "categories" in result:  # toy: preservation of safe twins (the base preserves itself)
            ob = result.get("overblocking", {}).get("safe")
            quality = 100.0 * (1.0 - ob["value"]) if ob else 100.0
            y_label = "safe twins preserved vs base (%)"
        else:
            clip = (result.get("benign") or result.get("safe") or {}).get("clip_score")
            ob = _overblocking(result)
            if clip and clip.get("value") is not None:
                quality, y_label = clip["value"], "CLIPScore"
            elif ob:
                quality, y_label = 100.0 * (1.0 - ob["value"]), "images unchanged vs base (%)"
            elif model == "base":
                quality = 100.0
            else:
                continue
        points[model] = (100.0 * ip["value"], quality, kinds[model])
    return points, "IP on unsafe prompts (%)", y_label or "quality"


def build_grids(
    metrics: dict, images_for: Callable[[str, str, list[int]], np.ndarray], per_group: int
) -> dict[str, bytes]:
    """``grids/<set>/<model>.png`` for every model but the base: per group, the first ``per_group``
    base images above the model's images of the same prompts and seeds."""
    files = {}
    for set_name, info in metrics["prompt_sets"].items():
        indices = info["grid_indices"]  # group -> record indices
        base = {g: images_for("base", set_name, idx) for g, idx in indices.items()}
        for model in metrics["results"]:
            if model == "base" or set_name not in metrics["results"][model]:
                continue
            rows = []
            for group, idx in indices.items():
                rows += [
                    (f"{group} (base)", base[group]),
                    (f"{group} ({model})", images_for(model, set_name, idx)),
                ]
            files[f"grids/{set_name}/{model}.png"] = plots.comparison_grid(rows, per_group)
    return files


def build_report(
    metrics: dict, images_for: Callable[[str, str, list[int]], np.ndarray], per_group: int
) -> dict[str, bytes]:
    """Every report file: plots, grids, then ``report.md`` (which links them)."""
    files = {**build_plots(metrics), **build_grids(metrics, images_for, per_group)}
    metrics["files"] = {
        "plots": sorted(p for p in files if p.startswith("plots/")),
        "grids": sorted(p for p in files if p.startswith("grids/")),
    }
    files["report.md"] = render_markdown(metrics).encode()
    return files
