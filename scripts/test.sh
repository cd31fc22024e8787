#!/usr/bin/env bash
# Set up (or update) .venv and run the test suite. Real-data tests read Multi30K from
# $SEQ2SEQ_DATA_DIR (default: ../shared/data/multi30k when it exists); with CI=true a
# missing data directory fails the suite instead of skipping those tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
if [ -z "${SEQ2SEQ_DATA_DIR:-}" ] && [ -d ../shared/data/multi30k ]; then
    export SEQ2SEQ_DATA_DIR="$(cd ../shared/data/multi30k && pwd)"
fi
exec .venv/bin/python -m pytest -q "$@"
