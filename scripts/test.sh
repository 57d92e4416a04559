#!/usr/bin/env bash
# Runs the test suite, installing what it needs first.
#
# The tests are written with Swift Testing; when no test imports XCTest, its runner (which would
# first print "Executed 0 tests") is left out. The export test scores a model with NumPy:
# Debian's python3-numpy is installed when no python3 here can import numpy.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
if ! python3 -c 'import numpy' 2>/dev/null && ! /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
    echo "test: installing python3-numpy for the export test"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq python3-numpy >/dev/null ||
        echo "test: python3-numpy could not be installed; the export test will be skipped" >&2
fi
swift build --build-tests
runners=()
if ! grep -rqs --include='*.swift' '^import XCTest' Tests; then runners=(--disable-xctest); fi
swift test --skip-build ${runners[@]+"${runners[@]}"} "$@"
