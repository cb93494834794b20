#!/usr/bin/env bash
# Panic-freedom link check: build a bare-metal binary that calls every public entry point of
# virtq with opaque inputs. Its panic handler calls an undefined symbol, so the link fails if
# any panic path survives optimisation. First proves the check can fail (a build with a
# deliberate panic path must not link), then builds the real check.
# Usage: .ci/panic-check/build.sh [target]
set -euo pipefail
cd "$(dirname "$0")"
target="${1:-x86_64-unknown-none}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
build() { cargo build --quiet --release --target "$target" "$@"; }

if build --features self-test 2> self-test.log; then
    echo "panic-check: the self-test (deliberate out-of-bounds index) linked: the check is broken" >&2
    exit 1
fi
grep -q virtq_panic_path_survived self-test.log || { cat self-test.log >&2; exit 1; }
rm -f self-test.log

if build 2> build.log; then
    echo "panic-check ($target): linked, no panic path survives"
    rm -f build.log
else
    if grep -q "virtq_panic_path_survived" build.log; then
        echo "panic-check ($target): a panic path survives optimisation:" >&2
        grep -E "undefined symbol|referenced by|>>> " build.log | head -40 >&2
    else
        cat build.log >&2
    fi
    exit 1
fi
