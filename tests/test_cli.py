"""The command line, run as a user runs it: the installed ``alignguard`` script and ``jobs/*.py``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser, main

# The console script that `pip install -e .` put beside this interpreter (the venv need not be on PATH).
ALIGNGUARD = shutil.which("alignguard", path=str(Path(sys.executable).parent)) or "alignguard"


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    if args[0] == "alignguard":
        args = (ALIGNGUARD, *args[1:])
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_console_script_is_installed():
    assert Path(ALIGNGUARD).is_file(), "pip install -e . installs the alignguard console script"


def test_help_at_every_level_explains_itself(capsys):
    parser = build_parser()
    for argv in (
        ["--help"],
        ["config", "--help"],
        ["data", "--help"],
        ["data", "stats", "--help"],
        ["doctor", "--help"],
    ):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: alignguard" in out and len(out.splitlines()) > 3
    assert "key.sub=value" in (parser._subparsers._group_actions[0].choices["config"].format_help())


def test_config_prints_the_override(repo):
    result = run("alignguard", "config", "--config", str(repo / "configs/sd15.yaml"), "training.lora.rank=8")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["training"]["lora"]["rank"] == 8
    assert config["model"]["family"] == "sd15"


def test_invalid_override_exits_nonzero_naming_the_key(repo):
    result = run("alignguard", "config", "--config", str(repo / "configs/sd15.yaml"), "training.lora.rank=-1")
    assert result.returncode == 2
    assert "training.lora.rank" in result.stderr and "greater than 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_is_a_clear_error(capsys):
    assert main(["config", "--config", "/nonexistent.yaml"]) == 2
    assert "config file not found: /nonexistent.yaml" in capsys.readouterr().err


def test_data_stats_on_the_real_file(coprov2_csv):
    result = run("alignguard", "data", "stats", str(coprov2_csv))
    assert result.returncode == 0, result.stderr
    assert "pairs:                 15,690" in result.stdout
    for category, count in [("hate", "4,393"), ("self_harm", "958"), ("illegal_activity", "1,923")]:
        assert any(line.split() == [category, count] for line in result.stdout.splitlines()), result.stdout
    as_json = json.loads(run("alignguard", "data", "stats", str(coprov2_csv), "--json").stdout)
    assert as_json["pairs"] == 15_690 and sum(as_json["categories"].values()) == 16_043


def test_data_stats_on_a_malformed_file(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,image,category\nx,u_idx_0_0.jpg,Gore\n")
    assert main(["data", "stats", str(bad)]) == 2
    assert f"{bad}:2: unknown category label 'Gore'" in capsys.readouterr().err


def test_job_script_runs_from_any_directory(repo, tmp_path):
    result = run(sys.executable, str(repo / "jobs/doctor.py"), "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage: alignguard doctor" in result.stdout


def test_config_explain_prints_type_default_and_help(capsys):
    from alignguard.config.schema import TrainingSection

    assert main(["config", "--explain", "training.lora.rank"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "training.lora.rank"
    assert "type:    int (> 0)" in out and "default: 4" in out
    assert TrainingSection.model_fields["beta"].description
    assert main(["config", "--explain", "training.beta"]) == 0
    assert TrainingSection.model_fields["beta"].description in capsys.readouterr().out


def test_config_explain_a_section_lists_its_fields(capsys):
    from alignguard.config.schema import TrainingSection

    assert main(["config", "--explain", "training"]) == 0
    out = capsys.readouterr().out
    for name, field in TrainingSection.model_fields.items():
        assert any(line.split()[:1] == [name] and field.description in line for line in out.splitlines()), (
            name
        )


def test_config_explain_with_a_config_shows_its_value(repo, capsys):
    argv = ["config", "--config", str(repo / "configs/toy.yaml"), "--explain", "training.lora.rank"]
    assert main([*argv, "training.lora.rank=8"]) == 0
    assert "value:   8" in capsys.readouterr().out
    assert main(["config", "--explain", "training.beta", "training.beta=3"]) == 0  # on the defaults
    assert "value:   3.0" in capsys.readouterr().out


def test_config_explain_an_unknown_key_names_close_matches(capsys):
    result = run("alignguard", "config", "--explain", "training.bta")
    assert result.returncode == 2 and result.stdout == ""
    assert "unknown config key 'training.bta'" in result.stderr and "training.beta" in result.stderr
    assert "Traceback" not in result.stderr
    assert main(["config", "--explain", "beta"]) == 2  # a leaf name alone points at its full key
    assert "training.beta" in capsys.readouterr().err
    assert main(["config", "--explain", "training.beta.x"]) == 2
    assert "training.beta is a value" in capsys.readouterr().err


def test_config_needs_a_file_unless_it_explains(capsys):
    assert main(["config"]) == 2
    assert "--config FILE is required" in capsys.readouterr().err
