#!/usr/bin/env bash
# Starts the demo on the embedded default (SQLite, loopback): one site, two rooms, three simulated radiologists.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export UV_PYTHON_DOWNLOADS=never
exec uv run --frozen comms demo "$@"
