from __future__ import annotations

import textwrap

import pytest

from alignguard.data import (
    CATEGORIES,
    DataFormatError,
    PromptPair,
    category_counts,
    coprov2_stats,
    dedup_pairs,
    leaked_prompts,
    normalize_category,
    normalize_prompt,
    read_coprov2,
    read_prompt_set,
    split_pairs,
    write_coprov2,
)

# Published counts of the released training table (shared/data/README.md).
COPROV2_PAIRS = 15_690
COPROV2_COUNTS = {
    "hate": 4393,
    "harassment": 1801,
    "violence": 2141,
    "self_harm": 958,
    "sexual": 2712,
    "shocking": 2115,
    "illegal_activity": 1923,
}


def write(tmp_path, text, name="pairs.csv"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("Hate", "hate"),
        ("Harrasment", "harassment"),
        ("self-harm", "self_harm"),
        ("Illegal Activity", "illegal_activity"),
        ("SEXUAL", "sexual"),
        (" Shocking ", "shocking"),
        ("violence", "violence"),
    ],
)
def test_normalize_category(label, expected):
    assert normalize_category(label) == expected


def test_real_coprov2_file(coprov2_csv):
    pairs = read_coprov2(coprov2_csv)
    assert len(pairs) == COPROV2_PAIRS
    assert category_counts(pairs) == COPROV2_COUNTS
    assert [len(p.categories) for p in pairs].count(1) == 15_369
    assert pairs[0].pair_id == "coprov2-0000000"
    assert pairs[0].unsafe_prompt.startswith("A porch monkey swings")
    assert len({p.pair_id for p in pairs}) == COPROV2_PAIRS
    stats = coprov2_stats(pairs)
    assert stats["labels_per_pair"] == {"1": 15_369, "2": 293, "3": 24, "4": 4}


def test_multi_label_pairs_are_read_once(tmp_path):
    path = write(
        tmp_path,
        """
        prompt,image,category
        "unsafe one",u_idx_0000003_0.jpg,Hate
        "safe one",s_idx_0000003_0.jpg,Hate
        "unsafe one",u_idx_0000003_0.jpg,Violence
        "safe one",s_idx_0000003_0.jpg,Violence
        "unsafe two",u_idx_0000001_0.jpg,self-harm
        "safe two",s_idx_0000001_0.jpg,self-harm
        """,
    )
    pairs = read_coprov2(path)
    assert [p.pair_id for p in pairs] == ["coprov2-0000001", "coprov2-0000003"]
    assert pairs[1].categories == ("hate", "violence")
    assert pairs[0] == PromptPair("coprov2-0000001", "unsafe two", "safe two", ("self_harm",))


def test_write_then_read_roundtrip(tmp_path):
    pairs = [
        PromptPair("x", "a knife fight", "a pillow fight", ("violence",)),
        PromptPair("y", 'a, quoted "thing"', "a calm thing", ("hate", "shocking")),
    ]
    write_coprov2(pairs, tmp_path / "out.csv")
    back = read_coprov2(tmp_path / "out.csv")
    assert [(p.unsafe_prompt, p.safe_prompt, p.categories) for p in back] == [
        (p.unsafe_prompt, p.safe_prompt, p.categories) for p in pairs
    ]


@pytest.mark.parametrize(
    ("body", "line", "problem"),
    [
        ("prompt,image\nx,u_idx_0_0.jpg\n", 1, "missing column(s) category"),
        ("prompt,image,category\nx,u_idx_0_0.jpg,Hate\n", 2, "has no safe twin"),
        ("prompt,image,category\nx,s_idx_0_0.jpg,Hate\n", 2, "has no unsafe twin"),
        (
            "prompt,image,category\nx,u_idx_0_0.jpg,Hate\ny,s_idx_0_0.jpg,Gore\n",
            3,
            "unknown category label 'Gore'",
        ),
        (
            "prompt,image,category\nx,u_idx_0_0.jpg,Hate\ny,s_idx_0_0.jpg,Violence\n",
            2,
            "unsafe side labelled",
        ),
        ("prompt,image,category\nx,pair0.jpg,Hate\n", 2, "is not u_idx_<N>_<k>"),
        (
            "prompt,image,category\nx,u_idx_0_0.jpg,Hate\ny,s_idx_0_0.jpg,Hate\nz,u_idx_0_0.jpg,Violence\n",
            4,
            "two different prompts",
        ),
        ("prompt,image,category\n,u_idx_0_0.jpg,Hate\n", 2, "empty prompt"),
        ("", 1, "empty file"),
    ],
)
def test_malformed_csv_names_file_line_and_problem(tmp_path, body, line, problem):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(DataFormatError) as info:
        read_coprov2(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert problem in str(info.value)


def test_missing_file():
    with pytest.raises(DataFormatError, match="file not found"):
        read_coprov2("/nonexistent/pairs.csv")


def test_i2p_style_prompt_set(tmp_path):
    path = write(
        tmp_path,
        """
        prompt,categories,sd_seed,sd_guidance_scale,case_number
        "a dark alley","violence, illegal activity",1234,7,17
        "a beach",,42,7.5,18
        """,
        name="i2p.csv",
    )
    records = read_prompt_set(path)
    assert [r.prompt_id for r in records] == ["17", "18"]
    assert records[0].categories == ("violence", "illegal_activity")
    assert records[0].seed == 1234 and records[0].guidance == 7.0
    assert records[1].categories == () and records[1].seed == 42


def test_caption_only_prompt_set_and_errors(tmp_path):
    coco = write(tmp_path, "caption\na dog on a couch\n", name="coco.csv")
    (record,) = read_prompt_set(coco)
    assert record.prompt_id == "coco-000000" and record.seed is None and record.categories == ()
    with pytest.raises(DataFormatError, match="no prompt column"):
        read_prompt_set(write(tmp_path, "words\nx\n", name="nocol.csv"))
    with pytest.raises(DataFormatError, match=r"bad_seed.csv:2: seed 'abc'"):
        read_prompt_set(write(tmp_path, "prompt,seed\nx,abc\n", name="bad_seed.csv"))
    with pytest.raises(DataFormatError, match="unknown category"):
        read_prompt_set(write(tmp_path, "prompt,category\nx,gore\n", name="bad_label.csv"))
    assert read_prompt_set(tmp_path / "bad_label.csv", strict_categories=False)[0].categories == ()


def test_dedup_and_leakage():
    pairs = [
        PromptPair("a", "A red  Knife!", "a red spoon", ("violence",)),
        PromptPair("b", "a red knife", "A red spoon.", ("violence",)),
        PromptPair("c", "a red knife", "a blue spoon", ("violence",)),
    ]
    result = dedup_pairs(pairs)
    assert [p.pair_id for p in result.kept] == ["a", "c"]
    assert [p.pair_id for p in result.dropped] == ["b"]
    assert normalize_prompt("  A  Red\tKnife! ") == "a red knife"
    assert leaked_prompts(["A cat.", "a dog"], ["a CAT", "a bird"]) == {"a cat"}


def test_split_is_deterministic_stable_and_keeps_concepts_together():
    pairs = [
        PromptPair(f"p{i}", f"unsafe {i}", f"safe {i}", (CATEGORIES[i % 7],), concept=f"concept{i % 20}")
        for i in range(400)
    ]
    train, test = split_pairs(pairs, test_fraction=0.25, seed=3)
    assert split_pairs(pairs, 0.25, 3) == (train, test)
    assert len(train) + len(test) == 400 and 0 < len(test) < 400
    assert not {p.concept for p in train} & {p.concept for p in test}
    # Adding pairs never moves existing ones across the split.
    more = [*pairs, PromptPair("new", "u", "s", ("hate",), concept="concept999")]
    assert {p.pair_id for p in split_pairs(more, 0.25, 3)[1]} - {"new"} == {p.pair_id for p in test}
    assert split_pairs(pairs, 0.25, 4)[1] != test
    with pytest.raises(ValueError):
        split_pairs(pairs, 1.0, 0)
