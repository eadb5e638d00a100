#!/usr/bin/env bash
# run.sh: one entry point for a fresh machine. The first call creates .venv and installs the
# project; later calls reuse it (reinstalling when pyproject.toml changes).
#
#   ./run.sh demo [key=value ...]   the main job on the toy world, on a local Ray instance (no GPU)
#   ./run.sh test [pytest args]     the test suite (what CI runs)
#   ./run.sh lint                   ruff check + format check
#   ./run.sh setup                  only install
#
# Environment: ALIGNGUARD_VENV (default .venv); ALIGNGUARD_TORCH (default torch==2.13.0, the CPU
# wheel on our build machines: set it to your platform's CUDA build, or to "skip" to keep the
# torch you installed yourself).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${ALIGNGUARD_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
TORCH_SPEC="${ALIGNGUARD_TORCH:-torch==2.13.0}"

setup() {
  if [ -x "$VENV/bin/alignguard" ] && [ "$VENV/.installed" -nt pyproject.toml ]; then
    return
  fi
  echo "run.sh: installing into $VENV (first run only; a few minutes)" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  if [ "$TORCH_SPEC" != "skip" ]; then
    "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
  fi
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  touch "$VENV/.installed"
}

# Subprocesses (Ray workers, `alignguard` in tests) use this environment too.
export PATH="$VENV/bin:$PATH"

command="${1:-help}"
[ $# -gt 0 ] && shift
case "$command" in
  setup)
    setup
    ;;
  demo)
    setup
    exec "$VENV/bin/alignguard" pipeline --config configs/toy.yaml "$@"
    ;;
  test)
    setup
    set +e
    "$VENV/bin/python" -m pytest "$@"
    status=$?
    set -e
    if [ "$status" -eq 5 ]; then
      echo "run.sh: pytest collected no tests; that is a failure, not a pass" >&2
      exit 1
    fi
    exit "$status"
    ;;
  lint)
    setup
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    ;;
  help | -h | --help)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "run.sh: unknown command '$command' (try: demo, test, lint, setup)" >&2
    exit 2
    ;;
esac
