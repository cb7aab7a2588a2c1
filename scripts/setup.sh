#!/usr/bin/env bash
# Installs what Contrast Comms needs on a fresh Debian 12 machine with Python 3.11 and pip (run as root):
# Debian packages (SIP peers, speech, PostgreSQL, Chromium) and the Python environment through uv.
# Usage: scripts/setup.sh [--test]   (--test adds the packages only the test suite needs)
set -euo pipefail
cd "$(dirname "$0")/.."

runtime_pkgs=(espeak-ng sox)
test_pkgs=(sip-tester baresip-core kamailio postgresql chromium)
pkgs=("${runtime_pkgs[@]}")
[ "${1:-}" = "--test" ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv"
  python3 -m pip install -q --disable-pip-version-check uv
fi
export UV_PYTHON_DOWNLOADS=never
uv sync --frozen --all-extras -q
