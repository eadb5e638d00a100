"""Co-Merge: keep, at each position of ΔW, the expert that is most active there.

What the paper publishes is one sentence: "we analyze which expert has the highest activation
for each weight across all inputs. Then, we obtain the merged weights from multiple experts by
merging only the most active weights per expert." Our reading, made concrete:

- *activation of a weight*: the contribution the weight makes to its layer's output. Entry
  (o, j) of expert i's update adds ΔW_i[o, j]·x_j to output o, where x is the layer's input.
- *across all inputs*: the calibration set — prompts of every category (unsafe and safe),
  clean latents noised at sampled timesteps — run through the base UNet **with expert i
  active**, so x is what the layer sees when that expert drives the model.
- element-wise score S_i[o, j] = mean over inputs and tokens of |ΔW_i[o, j]·x_j|
  = |ΔW_i[o, j]|·mean|x_j|: only the per-feature mean |x_j| per layer per expert needs
  recording (see :mod:`alignguard.merge.calibration`).
- row-wise variant: one score per output unit, S_i[o] = mean over inputs and tokens of
  |(ΔW_i x)_o|, the whole row then comes from one expert.
- *merging only the most active weights per expert*: merged ΔW[o, j] = ΔW_w[o, j] with
  w = argmax_i S_i[o, j] (rows: w = argmax_i S_i[o] for the whole row). Nothing is averaged,
  so no expert's winning entries are diluted by the others.

- token-wise variant (``granularity: token``, the default): the "weights" are read as the
  layer's whole update and the "inputs" as single tokens. Expert i is *active* on a calibration
  token x when ‖ΔW_i x‖ reaches τ (``merge.threshold``) × its peak over the calibration set:
  those are "the most active weights per expert", the inputs it was trained to change. The
  routed output y(x) is, with ``merge.routing: winner`` (default), the output of the most
  active expert w(x) = argmax_i ‖ΔW_i x‖ when it is active; with ``active``, the sum of every
  active expert's output Σ_i 1[i active]·ΔW_i x. Tokens on which no expert is active keep the
  base model (y = 0). The merged ΔW is the ridge least-squares fit of y on every token:
  ΔW = argmin Σ_x ‖ΔW x − y(x)‖² + ρ·tr(G)/d·‖ΔW‖² = C (G + ρ·tr(G)/d·I)⁻¹, with G = Σ x xᵀ
  and C = Σ y(x) xᵀ. Where two experts act on different tokens (a category's own concept
  words), each keeps its full effect there; the element-wise rule instead splices entries of
  several low-rank updates into a matrix none of them is — and on layers whose input does not
  depend on the expert (cross-attention keys and values read the text encoder's output) its
  score reduces to |ΔW_i[o, j]|, plain magnitude.
  The two routings differ on tokens where several experts are active (a concept word's context
  spreads into the tokens after it: the text encoder is causal). ``winner`` hands those tokens
  to one expert, so a weak expert can lose part of its effect; ``active`` keeps every effect but
  adds them up, which can push an image into a third category's harm. In the toy world (see
  BENCHMARKS.md) ``active`` at τ 0.5 kept self-harm's expert (IP 0.17 merged, against 0.36 with
  ``winner``) but turned half of the hate prompts into violence's colour, so ``winner`` stays
  the default.

The row-wise merge is Σ_i diag(1[w(o) = i])·ΔW_i, so it factorises exactly at the
concatenated rank; the element-wise merge is a general matrix (factorised by SVD).
"""

from __future__ import annotations

import torch


def element_winners(stack: torch.Tensor, input_abs_mean: torch.Tensor) -> torch.Tensor:
    """Winner index ``[out, in]`` of S_i[o, j] = |ΔW_i[o, j]|·mean|x_j|.

    ``stack [n, out, in]``, ``input_abs_mean [n, in]`` (expert i's calibration inputs).
    Ties go to the lowest expert index."""
    scores = stack.abs() * input_abs_mean[:, None, :].to(stack)
    return scores.argmax(dim=0)


def select_most_active(
    block: torch.Tensor, input_abs_mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(merged ``[rows, in]``, winners ``[rows, in]`` as float indices) of ``block [n, rows, in]``
    in one sweep over the experts: the same result as :func:`element_winners` + :func:`select`
    (ties to the lowest index). An argmax across the outer dimension, ``torch.where`` and
    ``masked_fill`` are all ~10x slower on CPU than this arithmetic (``lerp`` with a 0/1 weight
    selects exactly)."""
    weights = input_abs_mean.to(block)
    best = block[0].abs().mul_(weights[0])
    merged = block[0].clone()
    winners = torch.zeros_like(merged)
    for i in range(1, block.shape[0]):
        score = block[i].abs().mul_(weights[i])
        better = (score - best).sign_().clamp_(min=0)  # 1.0 where strictly more active (float, fast)
        merged.lerp_(block[i], better)
        winners.lerp_(torch.full_like(winners, i), better)
        torch.maximum(best, score, out=best)
    return merged, winners


def row_winners(output_abs_mean: torch.Tensor) -> torch.Tensor:
    """Winner index ``[out]`` of S_i[o] = mean |(ΔW_i x)_o|; ``output_abs_mean [n, out]``."""
    return output_abs_mean.argmax(dim=0)


def select(stack: torch.Tensor, winners: torch.Tensor) -> torch.Tensor:
    """Merged ΔW ``[out, in]``: each position (``winners [out, in]``) or row (``winners [out]``)
    taken from its winner in ``stack [n, out, in]``."""
    if winners.ndim == 1:
        winners = winners[:, None].expand(stack.shape[1:])
    return stack.gather(0, winners[None].to(stack.device)).squeeze(0)


def row_winner_weights(winners: torch.Tensor, n: int) -> torch.Tensor:
    """``[n, out]`` one-hot row weights w with merged ΔW = Σ_i diag(w_i)·ΔW_i."""
    return torch.nn.functional.one_hot(winners, n).T.to(torch.float32)


def winner_share(winners: torch.Tensor, n: int) -> list[float]:
    """Share of positions (or rows) each of ``n`` experts won."""
    counts = torch.bincount(winners.reshape(-1), minlength=n).to(torch.float64)
    return (counts / counts.sum()).tolist()


def routed_least_squares(cross: torch.Tensor, gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """Token-wise Co-Merge: ΔW ``[out, in]`` = C (G + ρ·tr(G)/d·I)⁻¹ (float64 solve, float32 out).

    ``cross [out, in]`` = Σ y(x) xᵀ over routed tokens (y: the routed output), ``gram [in, in]`` = Σ x xᵀ over
    all tokens; ``ridge`` ρ > 0 is relative to the mean eigenvalue tr(G)/d, so it keeps the
    solve well posed in input directions the calibration set never excites (there ΔW → 0)."""
    if ridge <= 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    gram, cross = gram.double(), cross.double()
    d = gram.shape[0]
    damping = ridge * max(float(gram.diagonal().sum()) / d, 1e-12)
    regularised = gram + damping * torch.eye(d, dtype=gram.dtype, device=gram.device)
    # G is symmetric: ΔW G' = C  ⇔  G' ΔWᵀ = Cᵀ.
    return torch.linalg.solve(regularised, cross.T).T.float()
