#!/usr/bin/env bash
# Combine the branch coverage that every test pass and every Python process it started
# (uvicorn, rundramatiq and its workers, the demo) wrote, report it per module, and fail
# under the floor in pyproject.toml ([tool.coverage.report] fail_under).
#
# To record, run the passes with COVERAGE_PROCESS_START pointing at pyproject.toml:
#   export COVERAGE_PROCESS_START="$PWD/pyproject.toml"
#   pytest; TASKSTATE_TEST_SERVICES=1 pytest
#   bash scripts/coverage_report.sh
# or one pass at a time: `coverage run -m pytest` (same configuration).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
unset COVERAGE_PROCESS_START
if ! ls .coverage.* >/dev/null 2>&1 && [ ! -f .coverage ]; then
  echo "no coverage data: run the tests with COVERAGE_PROCESS_START=$PWD/pyproject.toml" >&2
  exit 1
fi
if ls .coverage.* >/dev/null 2>&1; then
  "$python" -m coverage combine --quiet
fi
"$python" -m coverage report
