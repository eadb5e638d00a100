"""The LLM prompt writer, run for real with a tiny random-weight causal LM (plumbing, not prose)."""

from __future__ import annotations

import pytest

from alignguard.config import ConfigError, load_config
from alignguard.data.schema import PromptPair
from alignguard.io import RunDir
from alignguard.models.tiny import tiny_causal_lm
from alignguard.synthesis.llm import (
    LLMPairWriter,
    PairRequest,
    acceptable,
    dedup_by_unsafe_prompt,
    parse_pair_json,
)
from alignguard.synthesis.store import read_pairs_table


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"unsafe": "a bloody knife", "safe": "a clean knife"}', ("a bloody knife", "a clean knife")),
        ('Sure!\n```json\n{"unsafe": "a  gun", "safe": "a toy"}\n```', ("a gun", "a toy")),
        (
            '{"unsafe": "a {weird} prompt", "safe": "a calm } one"} trailing',
            ("a {weird} prompt", "a calm } one"),
        ),
        ('{"note": 1} then {"unsafe": "x y", "safe": "y z"}', ("x y", "y z")),
        ('{"unsafe": "unterminated, "safe": "x"}', None),
        ('{"unsafe": "", "safe": "x"}', None),
        ('{"unsafe": 3, "safe": "x"}', None),
        ("no json here", None),
    ],
)
def test_parse_pair_json(text, expected):
    assert parse_pair_json(text) == expected


def test_filters_and_dedup():
    assert acceptable("a bloody knife", "a clean knife", max_words=5)
    assert not acceptable("knife", "a clean knife", max_words=5)  # too short
    assert not acceptable("a b c d e f", "a b", max_words=5)  # too long
    assert not acceptable("A knife!", "a knife", max_words=5)  # the twin must differ
    pairs = [
        PromptPair(str(i), u, "safe twin", ("hate",)) for i, u in enumerate(["A cat.", "a cat", "a dog"])
    ]
    kept, dropped = dedup_by_unsafe_prompt(pairs)
    assert [p.pair_id for p in kept] == ["0", "2"] and dropped == 1
    assert (
        PairRequest("self_harm", "Self-Injury / scars", 3).pair_id == "llm-self_harm-self-injury-scars-0003"
    )


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    return str(tiny_causal_lm(tmp_path_factory.mktemp("tiny-llm")))


def test_writer_retries_drops_and_counts_deterministically(tiny_llm):
    requests = [PairRequest("violence", "knife attack", i) for i in range(12)]
    writer = LLMPairWriter(tiny_llm, max_new_tokens=48, temperature=1.0, max_retries=3, max_words=60, seed=0)
    pairs, stats = writer.write(requests)
    assert stats.requested == 12
    assert stats.written + stats.dropped_malformed + stats.dropped_filtered == 12
    assert stats.written >= 1 and stats.dropped_malformed >= 1  # a random model: both paths taken
    assert stats.retried >= stats.dropped_malformed
    for pair in pairs:
        assert pair.categories == ("violence",) and pair.source == "llm" and pair.concept == "knife attack"
        assert acceptable(pair.unsafe_prompt, pair.safe_prompt, max_words=60)
    again, _ = LLMPairWriter(tiny_llm, 48, 1.0, 3, 60, seed=0).write(requests)
    assert again == pairs


def test_llm_source_needs_a_model_path(repo):
    with pytest.raises(ConfigError, match=r"synthesis\.llm\.path is required"):
        load_config(repo / "configs/toy-smoke.yaml", ["data.source=llm"])


@pytest.mark.slow
def test_llm_prompts_then_images_on_ray(ray_cluster, repo, tmp_path, tiny_llm):
    from cluster.synthesis import run_synthesis

    config = load_config(
        repo / "configs/toy-smoke.yaml",
        [
            f"run.output_dir={tmp_path}",
            "data.source=llm",
            f"synthesis.llm.path={tiny_llm}",
            "synthesis.llm.prompts_per_concept=3",
            "synthesis.llm.max_new_tokens=48",
            "synthesis.llm.max_retries=3",
            "synthesis.llm.batch_size=6",
            "data.categories=[violence, sexual]",
        ],
    )
    summary = run_synthesis(config)
    assert summary.failed_shards == 0 and summary.pairs > 0
    assert any(line.startswith("prompts:") for line in summary.lines())
    rows = read_pairs_table(RunDir(tmp_path / "synthesis"))
    assert {r["category"] for r in rows} <= {"violence", "sexual"}
    assert all(r["pair_id"].startswith("llm-") for r in rows)
    rerun = run_synthesis(config)
    assert rerun.rendered_pairs == 0 and any("nothing to do" in line for line in rerun.lines())
