#!/usr/bin/env bash
# Runs the test suite, installing what it needs first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
swift build --build-tests
swift test --skip-build "$@"
