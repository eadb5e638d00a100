"""The library stays pure: ``alignguard`` never imports ray, deepspeed, fastapi or the Ray layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

# The web stack belongs to serve/: the core must import without it (starlette is fastapi's base).
FORBIDDEN = {"ray", "deepspeed", "fastapi", "starlette", "cluster", "serve", "jobs"}
RUNTIME_FORBIDDEN = ("ray", "deepspeed", "fastapi", "starlette")
LIBRARY = Path(__file__).resolve().parents[1] / "alignguard"


def test_no_module_in_the_library_imports_ray_deepspeed_fastapi_or_the_ray_layer():
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


def test_importing_every_library_package_leaves_ray_deepspeed_and_fastapi_unimported():
    packages = sorted(
        "alignguard." + ".".join(p.relative_to(LIBRARY).parts[:-1])
        for p in LIBRARY.rglob("__init__.py")
        if p.parent != LIBRARY
    )
    code = (
        "import sys, importlib\n"
        "import alignguard\n"
        f"for name in {packages!r}: importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {RUNTIME_FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"
    assert "alignguard.models" in packages and "alignguard.config" in packages
