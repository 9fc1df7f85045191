#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.   Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
exec "$PY" -m pytest "$@"
