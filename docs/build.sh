#!/usr/bin/env bash
# Build the documentation (HTML in docs/_build), warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m sphinx -W --keep-going -b html docs docs/_build "$@"
