"""Print the project's requirements, read from pyproject.toml: ``dependencies`` plus the named extras.

The image recipe (``cluster/image/Dockerfile``) installs exactly these lines, so the image carries
the dependencies pyproject.toml declares and nothing is copied by hand:

    python cluster/image/requirements.py pyproject.toml --extras cloud,eval,guard
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tomllib


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Requirement lines (with their version bounds), dependencies first, each line once."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise ValueError(f"unknown extras {unknown}; pyproject.toml defines {sorted(optional)}")
    lines = list(project["dependencies"])
    for extra in extras:
        lines += optional[extra]
    return list(dict.fromkeys(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extras", default="", help="comma-separated extras, e.g. cloud,eval,guard")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, [e for e in args.extras.split(",") if e])
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"error: {args.pyproject}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
