"""Diffusion-DPO (Wallace et al. 2023) in the convention of the official AlignGuard code, and variants.

For a pair with preferred image w (the safe twin) and rejected image l (the unsafe one), the same
timestep t and noise ε are used for both. With per-image denoising errors
``L(x) = mean_{c,h,w} (ε_pred(x_t, t) - target)^2`` for the policy (θ) and the frozen reference:

    inside = -β/2 · [(L_θ(w) - L_θ(l)) - (L_ref(w) - L_ref(l))]
    loss   = -mean log σ(inside)

The policy wins when it lowers its error on w relative to l more than the reference does. β = 5000
is the paper's value for SD; smaller models need smaller β (the toy world uses 1000).
Variants: an *anchor* term ``anchor_weight · mean L_θ(w)`` keeps the preferred image's likelihood
from collapsing with the rejected one's; ``sft`` trains on w alone (a baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("dpo", "sft")


def per_example_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per example: ``[B, C, H, W]`` x2 -> ``[B]`` (float32)."""
    return (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.ndim)))


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable
    metrics: dict[str, float]


def diffusion_dpo_loss(
    policy_w: torch.Tensor,
    policy_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    beta: float,
    anchor_weight: float = 0.0,
) -> LossOutput:
    """The DPO loss from per-example errors, all ``[B]``; references carry no gradient.

    Metrics: ``implicit_acc`` (share of pairs with inside > 0; ties count half, as no preference),
    ``reward_margin`` (mean inside term), policy and reference errors on w and l, and the anchor.
    """
    ref_w, ref_l = ref_w.detach(), ref_l.detach()
    inside = -0.5 * beta * ((policy_w - policy_l) - (ref_w - ref_l))
    dpo = -F.logsigmoid(inside).mean()
    anchor = policy_w.mean()
    loss = dpo + anchor_weight * anchor if anchor_weight else dpo
    accuracy = (inside > 0).float() + 0.5 * (inside == 0).float()
    metrics = {
        "loss": float(loss.detach()),
        "dpo_loss": float(dpo.detach()),
        "implicit_acc": float(accuracy.mean()),
        "reward_margin": float(inside.detach().mean()),
        "policy_mse_w": float(policy_w.detach().mean()),
        "policy_mse_l": float(policy_l.detach().mean()),
        "ref_mse_w": float(ref_w.mean()),
        "ref_mse_l": float(ref_l.mean()),
        "anchor": float(anchor.detach()),
    }
    return LossOutput(loss, metrics)


def sft_loss(policy_w: torch.Tensor) -> LossOutput:
    """Supervised fine-tuning on the preferred (safe) image only: ``mean L_θ(w)``."""
    loss = policy_w.mean()
    return LossOutput(loss, {"loss": float(loss.detach()), "policy_mse_w": float(loss.detach())})
