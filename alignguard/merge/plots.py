"""PNG plots of a merge's per-layer diagnostics, for a person to look at.

``winner_share.png`` (Co-Merge only: stacked share of positions each expert won, per layer),
``sign_conflict.png``, ``delta_norms.png`` (each expert's ‖ΔW‖ and the merged one, per layer) and
``svd_energy.png`` (energy kept by the factorisation, and the rank written). Layers run along x in
file order; labels are shortened module paths. With ``merge.refine``: ``refine.png`` (each
expert's retention before and after refinement, and the loss curves).
"""

from __future__ import annotations

import io
from collections.abc import Callable

from alignguard.merge.diagnostics import LayerDiagnostics

# Every plot a merge stage may write: a rerun removes the ones it no longer writes.
PLOT_NAMES = frozenset(
    {"winner_share.png", "sign_conflict.png", "delta_norms.png", "svd_energy.png", "refine.png"}
)


def _short(name: str) -> str:
    """``up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k`` → ``u1.2.0.attn2.to_k``."""
    parts = name.replace("transformer_blocks.", "").replace("attentions.", "").split(".")
    head = {"down_blocks": "d", "up_blocks": "u", "mid_block": "m"}.get(parts[0], parts[0])
    return head + ".".join(parts[1:]) if head != parts[0] else name


def _figure(layers: list[LayerDiagnostics], title: str, draw: Callable) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = min(5 + 0.18 * len(layers), 40)
    fig, ax = plt.subplots(figsize=(width, 4.5), dpi=100)
    x = list(range(len(layers)))
    draw(ax, x)
    ax.set_title(title)
    ax.set_xticks(x)
    ax.set_xticklabels([_short(d.name) for d in layers], rotation=90, fontsize=6)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def render_plots(layers: list[LayerDiagnostics], experts: list[str], label: str) -> dict[str, bytes]:
    """PNG bytes by file name; empty when matplotlib is not installed (plots are optional)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return {}
    plots = {}
    if layers and layers[0].winner_share is not None:

        def winners(ax, x):
            bottom = [0.0] * len(layers)
            for i, expert in enumerate(experts):
                share = [d.winner_share[i] for d in layers]  # type: ignore[index]
                ax.bar(x, share, bottom=bottom, label=expert, width=0.85)
                bottom = [b + s for b, s in zip(bottom, share, strict=True)]
            ax.set_ylabel("share of positions won")
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

        plots["winner_share.png"] = _figure(layers, f"{label}: winner share per expert", winners)

    def conflicts(ax, x):
        ax.plot(x, [d.sign_conflict for d in layers], "o-", ms=3, label="any two experts disagree")
        ax.plot(x, [d.pairwise_sign_conflict for d in layers], "s-", ms=3, label="mean over expert pairs")
        ax.set_ylim(0, 1)
        ax.set_ylabel("sign-conflict rate")
        ax.legend(fontsize=7)

    def norms(ax, x):
        for i, expert in enumerate(experts):
            ax.plot(x, [d.expert_norms[i] for d in layers], lw=1, label=expert)
        ax.plot(x, [d.merged_norm for d in layers], "k-", lw=2, label="merged")
        ax.set_ylabel("‖ΔW‖_F")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    def energy(ax, x):
        ax.bar(x, [d.energy_kept for d in layers], width=0.85, color="tab:blue")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("SVD energy kept")
        twin = ax.twinx()
        twin.plot(x, [d.rank for d in layers], "r.", label="rank written")
        twin.set_ylabel("rank", color="r")
        twin.set_ylim(0, 1.1 * max(d.rank for d in layers))

    plots["sign_conflict.png"] = _figure(layers, f"{label}: sign conflicts among experts", conflicts)
    plots["delta_norms.png"] = _figure(layers, f"{label}: ΔW norms", norms)
    plots["svd_energy.png"] = _figure(layers, f"{label}: factorisation energy kept", energy)
    return plots


def render_refine_plot(report: dict, label: str) -> bytes | None:
    """``refine.png``: retention per expert before/after (left), distillation and preservation
    losses per step (right); None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experts = list(report["before"]["retention"])
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    x = range(len(experts))
    for offset, key in ((-0.2, "before"), (0.2, "after")):
        values = [report[key]["retention"][e] for e in experts]
        bars.bar(
            [i + offset for i in x], values, width=0.4, label=f"{key} (drift {report[key]['drift']:.3f})"
        )
    bars.set_xticks(list(x))
    bars.set_xticklabels(experts, rotation=30, fontsize=7, ha="right")
    bars.set_ylim(min(0.0, *(report["before"]["retention"].values())), 1.05)
    bars.set_ylabel("retention (1: reproduces the expert)")
    bars.legend(fontsize=7)
    bars.grid(axis="y", alpha=0.3)
    steps = [h["step"] for h in report["history"]]
    for key in ("distil", "preserve"):
        curves.plot(steps, [h[key] for h in report["history"]], label=key)
    curves.set_yscale("log")
    curves.set_xlabel("step")
    curves.set_ylabel("MSE")
    curves.legend(fontsize=7)
    curves.grid(alpha=0.3)
    fig.suptitle(f"{label}: refinement (distilling the experts into the merged LoRA)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
