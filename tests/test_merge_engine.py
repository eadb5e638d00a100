"""The exact merge engine: identity, concatenation, factorisation, baselines, Co-Merge, the peft trap."""

from __future__ import annotations

import pytest
import torch
from merge_support import random_lora
from peft.utils import merge_utils

from alignguard.merge import (
    ActivationStats,
    LoraFile,
    LoraLayer,
    MergeOptions,
    lora_file_bytes,
    merge_experts,
    merge_layer,
    read_lora_bytes,
    svd_factors,
)
from alignguard.merge.comerge import element_winners, select
from alignguard.merge.diagnostics import sign_conflicts
from alignguard.merge.strategies import dense_merge, random_drop

SHAPES = {"blocks.0.proj": (12, 20), "blocks.1.proj": (20, 12), "blocks.2.proj": (16, 16)}
ALL_VARIANTS = [
    ("co_merge", "element"),
    ("co_merge", "row"),
    *[(s, "element") for s in ("linear", "task_arithmetic", "concat", "ties")],
    *[(s, "element") for s in ("dare_linear", "dare_ties", "magnitude_prune")],
]


def _experts(n: int, rank: int = 3, alpha: float = 6.0, shapes=SHAPES) -> dict[str, LoraFile]:
    return {f"e{i}": random_lora(shapes, rank, alpha, seed=i, up_std=0.5) for i in range(n)}


def _stats(experts: dict[str, LoraFile], seed: int = 0) -> ActivationStats:
    """Random positive calibration statistics (the calibration itself is tested elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    n, first = len(experts), next(iter(experts.values()))
    shapes = {name: layer.shape for name, layer in first.layers.items()}
    return ActivationStats(
        list(experts),
        {name: torch.rand(n, inp, generator=g) + 0.1 for name, (_, inp) in shapes.items()},
        {name: torch.rand(n, out, generator=g) + 0.1 for name, (out, _) in shapes.items()},
        {e: 1 for e in experts},
    )


def _product(factors) -> torch.Tensor:
    return factors.up @ factors.down


@pytest.mark.parametrize(("strategy", "granularity"), ALL_VARIANTS)
def test_merging_one_expert_is_the_identity(strategy, granularity):
    experts = _experts(1)
    options = MergeOptions(strategy=strategy, granularity=granularity, density=1.0)
    result = merge_experts(experts, options, _stats(experts))
    reread = read_lora_bytes(lora_file_bytes(result.file_factors()))
    for name, layer in experts["e0"].layers.items():
        torch.testing.assert_close(_product(result.factors[name]), layer.delta(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reread.layers[name].delta(), layer.delta(), atol=1e-5, rtol=1e-5)
    assert result.summary()["energy_kept"] == pytest.approx(1.0, abs=1e-6)


def test_trimming_strategies_change_a_single_expert_only_below_full_density():
    experts = _experts(1)
    delta = experts["e0"].layers["blocks.0.proj"].delta()
    merged = merge_experts(experts, MergeOptions(strategy="magnitude_prune", density=0.25))
    kept = _product(merged.factors["blocks.0.proj"])
    assert (kept.abs() > 1e-5).float().mean().item() == pytest.approx(0.25, abs=0.01)
    torch.testing.assert_close(kept[kept.abs() > 1e-5], delta[kept.abs() > 1e-5], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy", ["linear", "task_arithmetic", "concat"])
def test_row_weighted_merges_are_exact_at_the_concatenated_rank(strategy):
    experts = _experts(3, rank=3)
    result = merge_experts(experts, MergeOptions(strategy=strategy))
    weight = 1 / 3 if strategy == "linear" else 1.0
    for name in SHAPES:
        expected = weight * sum(e.layers[name].delta() for e in experts.values())
        assert result.factors[name].rank == 9
        torch.testing.assert_close(_product(result.factors[name]), expected, atol=1e-5, rtol=1e-5)


def test_baselines_equal_peft_merge_utils_applied_to_delta_w():
    stack = torch.stack([random_lora({"x": (24, 24)}, 4, 4.0, seed=i).layers["x"].delta() for i in range(4)])
    ones = torch.ones(4)
    for ours, theirs in [
        (dense_merge(stack, "ties", 0.3), merge_utils.ties(list(stack), ones, 0.3)),
        (dense_merge(stack, "magnitude_prune", 0.3), merge_utils.magnitude_prune(list(stack), ones, 0.3)),
        (dense_merge(stack, "task_arithmetic", 1.0), merge_utils.task_arithmetic(list(stack), ones)),
    ]:
        torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=1e-6)


def test_dare_drops_and_rescales_reproducibly():
    delta = torch.randn(200, 200)
    dropped = random_drop(delta, 0.3, torch.Generator().manual_seed(5))
    kept = dropped != 0
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.01)
    p = round(0.3 * 32768) / 32768  # the keep probability, to 15 bits
    torch.testing.assert_close(dropped[kept], delta[kept] / p)
    torch.testing.assert_close(dropped, random_drop(delta, 0.3, torch.Generator().manual_seed(5)))
    options = MergeOptions(strategy="dare_ties", density=0.5, seed=3)
    a, b = (merge_experts(_experts(3), options).factors["blocks.0.proj"] for _ in range(2))
    torch.testing.assert_close(_product(a), _product(b))


def test_co_merge_element_keeps_the_entry_of_the_most_active_expert():
    # Expert 0 has the larger weights, but expert 1's inputs on feature 1 are 10x stronger.
    stack = torch.tensor([[[4.0, 4.0], [-4.0, 4.0]], [[1.0, -1.0], [1.0, 1.0]]])
    input_abs_mean = torch.tensor([[1.0, 0.1], [1.0, 1.0]])
    winners = element_winners(stack, input_abs_mean)
    assert winners.tolist() == [[0, 1], [0, 1]]  # 4·0.1 < 1·1 on feature 1
    assert select(stack, winners).tolist() == [[4.0, -1.0], [-4.0, 1.0]]


def test_co_merge_row_takes_whole_rows_from_the_winner_exactly():
    experts = _experts(3, rank=2)
    stats = _stats(experts, seed=1)
    name = "blocks.1.proj"
    merged = merge_layer(
        name, [e.layers[name] for e in experts.values()], MergeOptions(granularity="row"), stats
    )
    winners = stats.output_abs_mean[name].argmax(dim=0)
    deltas = [e.layers[name].delta() for e in experts.values()]
    expected = torch.stack([deltas[int(w)][o] for o, w in enumerate(winners)])
    torch.testing.assert_close(merged.delta, expected)
    torch.testing.assert_close(_product(merged.factors), expected, atol=1e-5, rtol=1e-5)
    assert merged.factors.rank <= 6 and merged.factors.energy_kept == 1.0
    share = merged.diagnostics.winner_share
    assert share == pytest.approx([(winners == i).float().mean().item() for i in range(3)])


def test_truncated_svd_reports_the_energy_it_keeps():
    experts = _experts(4, rank=3)
    name = "blocks.2.proj"
    layers = [e.layers[name] for e in experts.values()]
    for options in (MergeOptions(strategy="task_arithmetic", rank=5), MergeOptions(strategy="ties", rank=5)):
        merged = merge_layer(name, layers, options)
        s = torch.linalg.svdvals(merged.delta.double())
        expected_energy = float((s[:5] ** 2).sum() / (s**2).sum())
        assert merged.factors.rank == 5
        assert merged.factors.energy_kept == pytest.approx(expected_energy, rel=1e-5)
        residual = (merged.delta - _product(merged.factors)).double().norm() ** 2
        assert float(residual) == pytest.approx(float((s[5:] ** 2).sum()), rel=1e-3)
    factors, _ = svd_factors(merged.delta, 5, method="randomized", seed=0)
    assert factors.energy_kept == pytest.approx(merged.factors.energy_kept, rel=1e-3)


def test_sign_conflicts_on_a_hand_made_stack():
    stack = torch.tensor([[[1.0, 1.0, 0.0]], [[-1.0, 1.0, 2.0]], [[1.0, 0.0, -3.0]]])
    any_conflict, pairwise = sign_conflicts(stack)
    assert any_conflict == pytest.approx(2 / 3)  # positions 0 and 2
    assert pairwise == pytest.approx((2 / 3 + 0 + 1 / 3) / 3)  # opposite pairs per position / 3 pairs


def test_peft_cross_term_trap_happens_in_peft_and_not_in_our_engine():
    """peft's ``add_weighted_adapter(combination_type="linear")`` merges A and B separately, so its
    ΔW is (Σ√w_i·s_i·B_i)(Σ√w_i·A_i), which contains B_i·A_j for i ≠ j; ours is Σ w_i·ΔW_i."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(16, 12)), LoraConfig(r=4, target_modules=["0"])
    )
    model.add_adapter("b", LoraConfig(r=4, target_modules=["0"]))
    layer = model.base_model.model[0]
    for adapter in ("default", "b"):
        torch.nn.init.normal_(layer.lora_B[adapter].weight)
    model.add_weighted_adapter(["default", "b"], [0.5, 0.5], "peft_linear", combination_type="linear")
    deltas = [layer.get_delta_weight(a) for a in ("default", "b")]
    expected = 0.5 * (deltas[0] + deltas[1])
    peft_delta = layer.get_delta_weight("peft_linear")
    cross = sum(
        0.5
        * layer.scaling[i] ** 0.5
        * layer.scaling[j] ** 0.5
        * layer.lora_B[i].weight
        @ layer.lora_A[j].weight
        for i, j in (("default", "b"), ("b", "default"))
    )
    assert (peft_delta - expected).norm() > 0.1 * expected.norm()  # the trap is real, and large
    torch.testing.assert_close(
        peft_delta, expected + cross, atol=1e-5, rtol=1e-4
    )  # and it is the cross terms
    experts = {
        a: LoraFile(
            {
                "0": LoraLayer(
                    layer.lora_A[a].weight.detach(), layer.lora_B[a].weight.detach(), layer.scaling[a]
                )
            }
        )
        for a in ("default", "b")
    }
    ours = merge_experts(experts, MergeOptions(strategy="linear")).factors["0"]
    torch.testing.assert_close(_product(ours), expected.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["ties", "magnitude_prune", "co_merge"])
def test_row_blocks_give_the_whole_matrix_result(strategy, monkeypatch):
    """Dense rules run in row blocks; thresholds stay whole-matrix, so blocks change nothing."""
    from alignguard.merge import engine
    from alignguard.merge.comerge import element_winners, select

    shapes = {"w": (300, 260)}  # 78,000 entries: above kth_smallest's sampling threshold too
    experts = {f"e{i}": random_lora(shapes, 4, 4.0, seed=i) for i in range(4)}
    layers = [e.layers["w"] for e in experts.values()]
    stats = _stats(experts)
    options = MergeOptions(strategy=strategy, density=0.3)
    monkeypatch.setitem(engine.BLOCK_ELEMENTS, "cpu", 260 * 7)  # 7 rows per block, a ragged last one
    blocked = engine.merge_delta("w", layers, options, stats).delta
    stack = engine.stack_deltas(layers)
    if strategy == "co_merge":
        whole = select(stack, element_winners(stack, stats.input_abs_mean["w"]))
    else:
        whole = dense_merge(stack, strategy, 0.3)
    torch.testing.assert_close(blocked, whole, atol=0, rtol=0)


def _routed_moments(experts: dict[str, LoraFile], name: str, tokens: torch.Tensor, threshold: float):
    """G, C and routed counts of ``tokens [T, in]`` computed directly (independently of the hooks)."""
    from alignguard.merge.routing import RoutedLayer

    deltas = torch.stack([e.layers[name].delta() for e in experts.values()]).double()
    x = tokens.double()
    activation = torch.einsum("noi,ti->nto", deltas, x).norm(dim=-1)  # [n, T]
    peaks = activation.amax(dim=1)
    cross = torch.zeros_like(deltas[0])
    routed = torch.zeros(len(experts), dtype=torch.long)
    unrouted = 0
    for t in range(x.shape[0]):  # routing "winner" (the default)
        winner = int(activation[:, t].argmax())
        if activation[winner, t] >= threshold * peaks[winner]:
            cross += torch.outer(deltas[winner] @ x[t], x[t])
            routed[winner] += 1
        else:
            unrouted += 1
    layer = RoutedLayer(gram=x.T @ x, cross=cross, routed=routed, unrouted=unrouted, tokens=x.shape[0])
    return peaks, layer


def _experts_on_separate_directions() -> tuple[dict[str, LoraFile], dict[str, torch.Tensor]]:
    """Two rank-2 experts on a 16-wide layer, each reading its own 4 input directions of a random
    orthonormal basis (as concept words do: separate directions, yet no weight entry is one
    expert's alone), tokens of each one's 'concept', and benign tokens on the remaining 8
    directions that neither reads."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    experts, tokens = {}, {}
    for i in range(2):
        directions = basis[:, 4 * i : 4 * i + 4]  # [16, 4]
        down = torch.randn(2, 4, generator=g) @ directions.T
        layer = LoraLayer(down=down, up=torch.randn(12, 2, generator=g), scale=1.0)
        experts[f"e{i}"] = LoraFile(layers={"blocks.0.proj": layer}, metadata={})
        concept = torch.randn(40, 4, generator=g) @ directions.T
        tokens[f"e{i}"] = concept + 0.01 * torch.randn(40, 16, generator=g)
    tokens["benign"] = torch.randn(80, 8, generator=g) @ basis[:, 8:].T
    return experts, tokens


def test_co_merge_token_keeps_each_expert_exact_on_its_own_tokens_where_element_wise_does_not():
    from alignguard.merge.routing import RoutedStats

    experts, tokens = _experts_on_separate_directions()
    name = "blocks.0.proj"
    peaks, layer = _routed_moments(experts, name, torch.cat(list(tokens.values())), threshold=0.05)
    stats = RoutedStats(list(experts), 0.05, {name: peaks.float()}, {name: layer})
    merged = merge_experts(experts, MergeOptions(granularity="token", ridge=1e-6), stats)
    delta = _product(merged.factors[name])
    for i, expert in enumerate(experts.values()):
        own = tokens[f"e{i}"]
        error = (own @ delta.T - own @ expert.layers[name].delta().T).norm() / (own @ delta.T).norm()
        assert error < 0.02  # each expert's effect on its own concept survives the merge
    assert (tokens["benign"] @ delta.T).norm() / tokens["benign"].norm() < 1e-3  # and nothing else
    assert layer.routed.tolist() == [40, 40] or min(layer.routed.tolist()) >= 38
    assert merged.diagnostics[0].winner_share == pytest.approx(layer.routed_share)

    # Element-wise Co-Merge on the same pair keeps entries, not effects: one expert loses its own.
    inputs = torch.cat(list(tokens.values())).abs().mean(dim=0)
    element_stats = ActivationStats(
        list(experts), {name: inputs.repeat(2, 1)}, {name: torch.ones(2, 12)}, {e: 1 for e in experts}
    )
    element = _product(
        merge_experts(experts, MergeOptions(granularity="element"), element_stats).factors[name]
    )
    errors = [
        float(
            (tokens[f"e{i}"] @ (element - e.layers[name].delta()).T).norm()
            / (tokens[f"e{i}"] @ element.T).norm()
        )
        for i, e in enumerate(experts.values())
    ]
    assert max(errors) > 0.1


def test_co_merge_token_of_one_expert_is_the_identity_and_needs_routed_statistics():
    experts = _experts(1)
    from alignguard.merge.routing import RoutedStats

    g = torch.Generator().manual_seed(3)
    peaks, layers = {}, {}
    for name, layer in experts["e0"].layers.items():
        peaks[name], layers[name] = _routed_moments(
            experts, name, torch.randn(200, layer.shape[1], generator=g), 0.0
        )
    stats = RoutedStats(["e0"], 0.0, peaks, layers)
    result = merge_experts(experts, MergeOptions(granularity="token", ridge=1e-9), stats)
    for name, layer in experts["e0"].layers.items():
        torch.testing.assert_close(_product(result.factors[name]), layer.delta(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="token-wise co_merge needs routed calibration statistics"):
        merge_experts(experts, MergeOptions(granularity="token"), _stats(experts))
    with pytest.raises(ValueError, match="ridge must be > 0"):
        MergeOptions(granularity="token", ridge=0)
