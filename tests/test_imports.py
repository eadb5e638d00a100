"""The library stays pure: ``alignguard`` never imports ray, deepspeed or the Ray layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN = {"ray", "deepspeed", "cluster", "serve", "jobs"}
LIBRARY = Path(__file__).resolve().parents[1] / "alignguard"


def test_no_module_in_the_library_imports_ray_deepspeed_or_the_ray_layer():
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(LIBRARY.parent)}:{node.lineno} imports {name}"
                for name in names
                if name.split(".")[0] in FORBIDDEN
            ]
    assert not offenders, "\n".join(offenders)


def test_importing_every_library_package_leaves_ray_and_deepspeed_unimported():
    packages = sorted(
        "alignguard." + ".".join(p.relative_to(LIBRARY).parts[:-1])
        for p in LIBRARY.rglob("__init__.py")
        if p.parent != LIBRARY
    )
    code = (
        "import sys, importlib\n"
        "import alignguard\n"
        f"for name in {packages!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'deepspeed'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"
    assert "alignguard.models" in packages and "alignguard.config" in packages
