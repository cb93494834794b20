#!/usr/bin/env bash
# Panic-freedom link check. src/main.rs is a bare-metal binary that calls every public entry
# point of virtq with opaque inputs; its panic handler calls a symbol defined nowhere, so the
# link fails if any panic path survives optimisation.
#
# Usage:
#   build.sh [TARGET...]               the check, four builds per target: opt-level 3 and "s",
#                                      each with and without overflow checks (release, fat LTO).
#                                      Default target: x86_64-unknown-none.
#   build.sh --self-test [MODULE...]   for each module (default: all nine), plant a panic in it
#                                      (--cfg virtq_plant_panic="MODULE", see src/plant.rs) and
#                                      require the link to FAIL. x86_64-unknown-none, opt-level 3.
#   build.sh --explain TARGET OPT OVERFLOW
#                                      when a build fails: link it anyway and print, for each
#                                      surviving panic call, the inlined source lines that reach
#                                      it (needs llvm-objdump and llvm-addr2line on PATH).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
SYMBOL=virtq_panic_path_survived
CONFIGS="3:false 3:true s:false s:true"
MODULES="memory chain split packed notify io in_order transport wire"

# build TARGET OPT OVERFLOW: 0 if it links, 1 if a panic path survives, 2 on any other failure.
build() {
    local log
    log=$(mktemp)
    if CARGO_PROFILE_RELEASE_OPT_LEVEL="$2" CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS="$3" \
        cargo build --quiet --release --target "$1" 2> "$log"; then
        rm -f "$log"
        return 0
    fi
    if grep -q "undefined symbol: $SYMBOL" "$log"; then
        rm -f "$log"
        return 1
    fi
    cat "$log" >&2
    rm -f "$log"
    return 2
}

explain() {
    local target=$1 opt=$2 overflow=$3 dir="$CARGO_TARGET_DIR/explain"
    CARGO_TARGET_DIR="$dir" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
        CARGO_PROFILE_RELEASE_OPT_LEVEL="$opt" CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS="$overflow" \
        RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=--noinhibit-exec" \
        cargo build --quiet --release --target "$target" 2> /dev/null || true
    local bin="$dir/$target/release/virtq-panic-check" dis
    dis=$(mktemp)
    llvm-objdump -d --no-show-raw-insn -C "$bin" > "$dis"
    # Call sites of the panic machinery. A site inside a function of `core` (a formatting
    # helper's assertion, say) stands for the calls of that function. Then every branch to a
    # site (the call itself is usually a shared, line-0 block), each shown as its chain of
    # inlined source lines.
    local pattern='<(core::panicking::|core::slice::index::|core::option::(unwrap|expect)_failed|core::result::unwrap_failed|__rustc::rust_begin_unwind)'
    awk -v pat="$pattern" '
        /^[0-9a-f]+ </ { fn = $1; name = $0; sub(/^[0-9a-f]+ </, "", name); next }
        $0 ~ pat && name !~ /^(core::panicking::|__rustc::)/ {
            site = $1; sub(/:$/, "", site)
            if (name ~ /^<?core::/) print "fn", fn; else print "site", site
        }' "$dis" | sort -u | while read -r kind a; do
            if [ "$kind" = fn ]; then
                a=$(echo "$a" | sed 's/^0*//')
                { grep -E "0x$a <" "$dis" || true; } | awk '{print $1}' | tr -d ':'
            else
                { grep -E "0x$a <" "$dis" || true; } | awk '{print $1}' | tr -d ':'
                echo "$a"
            fi
        done | sort -u | while read -r a; do
            llvm-addr2line -i -e "$bin" "0x$a" | sed -E 's|.*/(src/)|\1|; s|.*/||; s| \(discriminator [0-9]+\)||' |
                { grep -v ':0$' || true; } | paste -sd' ' -
        done | { grep . || true; } | sort | uniq -c | sort -rn
    rm -f "$dis"
}

if [ "${1:-}" = "--explain" ]; then
    shift
    explain "${1:-x86_64-unknown-none}" "${2:-3}" "${3:-true}"
    exit 0
fi

if [ "${1:-}" = "--self-test" ]; then
    shift
    modules="${*:-$MODULES}"
    failed=0
    for m in $modules; do
        start=$(date +%s)
        rc=0
        RUSTFLAGS="${RUSTFLAGS:-} --cfg virtq_plant_panic=\"$m\"" build x86_64-unknown-none 3 false || rc=$?
        case $rc in
            1) echo "panic-check self-test: panic planted in $m is caught ($(($(date +%s) - start)) s)" ;;
            0) echo "panic-check self-test: panic planted in $m LINKED: the check misses it" >&2; failed=1 ;;
            *) echo "panic-check self-test: the build with a panic planted in $m failed to compile" >&2; failed=1 ;;
        esac
    done
    exit $failed
fi

targets="${*:-x86_64-unknown-none}"
failed=0
for t in $targets; do
    for c in $CONFIGS; do
        opt=${c%:*} overflow=${c#*:}
        start=$(date +%s)
        rc=0
        build "$t" "$opt" "$overflow" || rc=$?
        what="panic-check ($t, opt-level $opt, overflow-checks $overflow)"
        case $rc in
            0) echo "$what: linked, no panic path survives ($(($(date +%s) - start)) s)" ;;
            1)
                echo "$what: a panic path survives optimisation; where:" >&2
                if command -v llvm-objdump > /dev/null && command -v llvm-addr2line > /dev/null; then
                    explain "$t" "$opt" "$overflow" | head -40 >&2
                else
                    echo "  (run $0 --explain $t $opt $overflow with llvm-objdump and llvm-addr2line installed)" >&2
                fi
                failed=1
                ;;
            *) echo "$what: build failed" >&2; failed=1 ;;
        esac
    done
done
exit $failed
