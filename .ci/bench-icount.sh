#!/usr/bin/env bash
# Print ONE table: device-side instructions per chain under callgrind, for every implementation
# and workload of benches/queue.rs, with the ratios the performance targets are stated in
# (split against the "raw checked hoisted" safe limit, packed against split, RegionTable against
# HostRegion, drain against the hand loop, rust-vmm against virtq), for the default bench
# profile and for fat LTO + one codegen unit. Then the idle transition (one empty pop with kicks
# on, without and with EVENT_IDX). Instruction counts do not drift with the machine's load the
# way timings do (±20 % here), so this is the stable figure beside .ci/bench-table.sh.
#
# Method: the bench's profile mode (VIRTQ_BENCH_PROFILE=<impl>/<A|B|C>) serves N batches of one
# workload; callgrind counts only inside the `queue::serve_*` functions (the device side: the
# driver's refill, the timer and the harness are not counted), and the count per chain is the
# difference between two batch counts, N2 - N1 batches apart (default 100 and 1100: 256,000
# chains for A and C, 85,000 for B), so per-call setup and the first batch's cold paths cancel.
#
# Usage: .ci/bench-icount.sh                      (a few minutes, most of it the LTO build)
#        PROFILES=default .ci/bench-icount.sh     (skip the LTO build)
#        N1=100 N2=2100 .ci/bench-icount.sh       (a larger difference)
# valgrind is installed with apt-get if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

profiles=${PROFILES:-"default lto"}
n1=${N1:-100}
n2=${N2:-1100}
target=${CARGO_TARGET_DIR:-$PWD/target}
bench_args=${BENCH_ARGS:-"-p virtq-bench --bench queue"}

if ! command -v valgrind >/dev/null 2>&1; then
    echo "installing valgrind" >&2
    apt-get update -qq >&2 && apt-get install -y -qq valgrind >&2
fi

# The bench executable of one profile (built, not run).
exe() { # $1 = profile
    local -a env=()
    if [ "$1" = lto ]; then
        env+=("CARGO_TARGET_DIR=$target/bench-lto" "CARGO_PROFILE_BENCH_LTO=fat"
            "CARGO_PROFILE_BENCH_CODEGEN_UNITS=1")
    else
        env+=("CARGO_TARGET_DIR=$target")
    fi
    # shellcheck disable=SC2086
    env "${env[@]}" cargo bench --quiet $bench_args --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1
}

chains() { case $1 in B) echo 85 ;; *) echo 256 ;; esac; }

# Instructions counted inside queue::serve_* for `batches` batches of one implementation.
count() { # $1 = exe, $2 = impl, $3 = workload, $4 = batches
    local out
    out=$(mktemp)
    VIRTQ_BENCH_PROFILE="$2/$3" VIRTQ_BENCH_BATCHES=$4 valgrind --tool=callgrind \
        --collect-atstart=no --toggle-collect='queue::serve_*' --callgrind-out-file="$out" \
        "$1" >/dev/null 2>"$out.log" || { cat "$out.log" >&2; exit 1; }
    awk '/^summary:/ { print $2 }' "$out"
    rm -f "$out" "$out.log"
}

per_chain() { # $1 = exe, $2 = impl, $3 = workload
    local a b
    a=$(count "$1" "$2" "$3" "$n1")
    b=$(count "$1" "$2" "$3" "$n2")
    awk -v a="$a" -v b="$b" -v n=$(((n2 - n1) * $(chains "$3"))) 'BEGIN { printf "%.0f", (b - a) / n }'
}

label_of() { case $1 in default) echo "bench (release)" ;; lto) echo "LTO fat, 1 CGU" ;; *) echo "$1" ;; esac; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "n/a" }'; }

impls=(raw raw-checked-hoisted virtq virtq-packed virtq-regions virtq-batched virtq-drain virtq-hand rust-vmm)
declare -A ic
declare -A exes
for p in $profiles; do
    echo "== $p: building the bench" >&2
    exes[$p]=$(exe "$p")
    [ -x "${exes[$p]}" ] || { echo "no bench executable for $p" >&2; exit 1; }
    for w in A B C; do
        for i in "${impls[@]}"; do
            ic[$p,$w,$i]=$(per_chain "${exes[$p]}" "$i" "$w")
        done
    done
    for s in split-plain split-event-idx packed-plain packed-event-idx; do
        ic[$p,idle,$s]=$(per_chain "${exes[$p]}" idle "$s")
    done
done

echo
echo "Instructions per chain, device side (callgrind, queue::serve_* only; difference of $n1 and $n2 batches), ring of 256, $(uname -m)"
echo
echo "| profile | workload | raw | raw checked hoisted | virtq | virtq / hoisted | packed | packed / virtq | RegionTable | RegionTable / virtq | batched | drain | drain / hand | rust-vmm | rust-vmm / virtq |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for p in $profiles; do
    label=$(label_of "$p")
    for w in A B C; do
        g() { echo "${ic[$p,$w,$1]}"; }
        echo "| $label | $w | $(g raw) | $(g raw-checked-hoisted) | $(g virtq) | $(ratio "$(g virtq)" "$(g raw-checked-hoisted)") | $(g virtq-packed) | $(ratio "$(g virtq-packed)" "$(g virtq)") | $(g virtq-regions) | $(ratio "$(g virtq-regions)" "$(g virtq)") | $(g virtq-batched) | $(g virtq-drain) | $(ratio "$(g virtq-drain)" "$(g virtq-hand)") | $(g rust-vmm) | $(ratio "$(g rust-vmm)" "$(g virtq)") |"
    done
done
echo
echo "Idle transition: instructions per empty pop_avail with kicks enabled"
echo
echo "| profile | split | split, EVENT_IDX (re-arm) | packed | packed, EVENT_IDX (re-arm) |"
echo "|---|---:|---:|---:|---:|"
for p in $profiles; do
    echo "| $(label_of "$p") | ${ic[$p,idle,split-plain]} | ${ic[$p,idle,split-event-idx]} | ${ic[$p,idle,packed-plain]} | ${ic[$p,idle,packed-event-idx]} |"
done
