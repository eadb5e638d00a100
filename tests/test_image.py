"""The container image recipe: Ray's base image at the tested version, and exactly the dependencies
pyproject.toml declares (generated from it, never copied by hand), which the tested venv satisfies."""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import ray
import tomllib
from packaging.requirements import Requirement

from cluster.manifests import DOCKERFILE, base_image, image_workdir

sys.path.insert(0, str(DOCKERFILE.parent))  # requirements.py is a build script, not a package module
import requirements


def dockerfile() -> str:
    return DOCKERFILE.read_text()


def build_extras() -> list[str]:
    match = re.search(r"^ARG EXTRAS=(\S+)", dockerfile(), flags=re.M)
    assert match, "the Dockerfile names the extras it bakes in"
    return match.group(1).split(",")


def test_base_image_is_rays_gpu_image_at_the_tested_version(repo):
    image = base_image()
    assert image == f"rayproject/ray:{ray.__version__}-py311-gpu"
    # The image's Python satisfies requires-python, and so does the one the tests run on.
    requires = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["requires-python"]
    from packaging.specifiers import SpecifierSet

    assert "3.11" in SpecifierSet(requires)
    # ray_cluster.yaml's setup command refuses any other Ray in the image.
    assert f"'{ray.__version__}'" in (repo / "ray_cluster.yaml").read_text()


def test_image_requirements_are_pyprojects(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    extras = build_extras()
    lines = requirements.requirements(repo / "pyproject.toml", extras)
    expected = list(project["dependencies"])
    for extra in extras:
        expected += [line for line in project["optional-dependencies"][extra] if line not in expected]
    assert lines == expected
    assert set(extras) == set(project["optional-dependencies"]) - {"dev"}  # every runtime extra, no CI tools
    names = {Requirement(line).name for line in lines}
    assert {"torch", "ray", "diffusers", "peft", "transformers", "deepspeed", "s3fs", "nudenet"} <= names


def test_dockerfile_installs_only_the_generated_requirements():
    text = dockerfile()
    assert "python requirements.py pyproject.toml --extras" in text
    commands = "\n".join(line for line in text.replace("\\\n", " ").splitlines() if not line.startswith("#"))
    installs = re.findall(r"pip install\b([^\n&]*)", commands)
    assert len(installs) == 2, installs
    assert "-r requirements.txt" in installs[0] and "-c constraints.txt" in installs[0]
    assert installs[1].split() == ["--no-deps", "."]  # the project itself, nothing named by hand
    # The repository lands where the manifests and ray_cluster.yaml expect it.
    assert image_workdir() == "/home/ray/alignguard"
    assert "ENV PYTHONPATH=/home/ray/alignguard" in text


def test_the_tested_environment_satisfies_every_image_requirement(repo):
    """The lower bounds are the releases the test suite ran on: each must hold here. Only the object
    store clients (extra ``cloud``) may be absent: the suite uses local and memory:// run dirs."""
    optional = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    may_be_absent = {Requirement(line).name for line in optional["cloud"]}
    unmet = []
    for line in requirements.requirements(repo / "pyproject.toml", build_extras()):
        requirement = Requirement(line)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            if requirement.name not in may_be_absent:
                unmet.append(f"{line}: not installed")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(f"{line}: {installed} installed")
    assert unmet == []


def test_requirements_script_cli(repo, tmp_path, capsys):
    assert requirements.main([str(repo / "pyproject.toml"), "--extras", "cloud"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "torch>=2.4" and out[-2:] == ["s3fs>=2024.6", "gcsfs>=2024.6"]
    assert requirements.main([str(repo / "pyproject.toml"), "--extras", "cloud,gpus"]) == 2
    assert "unknown extras ['gpus']" in capsys.readouterr().err
    assert requirements.main([str(tmp_path / "missing.toml")]) == 2


@pytest.mark.parametrize("ignore_file", [".dockerignore", ".rayignore"])
def test_local_state_stays_out_of_images_and_uploads(repo, ignore_file):
    entries = {
        line.strip().strip("/").removeprefix("**/")
        for line in (repo / ignore_file).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "runs", "__pycache__", ".pytest_cache"} <= entries


def test_docker_build_context_files_exist(repo):
    """Every COPY source exists in the repository (a renamed file would break the build)."""
    for sources in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile(), flags=re.M):
        for source in sources.split():
            assert Path(repo / source).exists(), source
