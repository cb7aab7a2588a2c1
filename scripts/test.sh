#!/usr/bin/env bash
# The whole check: installs everything (scripts/setup.sh --test), then lint, types, import contracts and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export UV_PYTHON_DOWNLOADS=never
echo "== ruff";          uv run --frozen ruff check .
echo "== ruff format";   uv run --frozen ruff format --check .
echo "== mypy --strict"; uv run --frozen mypy
echo "== import-linter"; uv run --frozen lint-imports
echo "== pytest"
set +e
COMMS_NO_SKIPS=1 uv run --frozen pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests: that is a failure"; exit 1; fi
exit $rc
