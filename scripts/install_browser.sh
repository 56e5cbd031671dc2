#!/usr/bin/env bash
# Installs headless Chromium, its matching chromedriver (Debian packages) and the selenium client
# (into .venv) for tests/e2e/test_playground.py, which drives the playground page at GET /.
# Idempotent: does nothing when all three are there. Needs root for apt (skipped otherwise: the
# test then skips and says why).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "install_browser: chromium/chromedriver missing and apt-get unavailable (not root?); the playground test will skip" >&2
        exit 0
    fi
    echo "install_browser: installing chromium and chromium-driver (Debian packages)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine has no package lists: update them once, then install.
    if ! apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; then
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
    fi
fi

if ! "$PYTHON" -c "import selenium" 2>/dev/null; then
    echo "install_browser: installing selenium into $PYTHON's environment..." >&2
    "$PYTHON" -m pip install -q "selenium>=4.20,<5"
fi
echo "install_browser: $(chromium --version 2>/dev/null), $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)" >&2
