#!/usr/bin/env bash
# Print ONE table: device-side ns per chain for virtq, rust-vmm virtio-queue 0.18 and a raw
# unchecked loop (bench/benches/queue.rs, groups split-*), for the default bench profile and for fat
# LTO + one codegen unit, with the ratios the performance targets are stated in: virtq against
# "raw checked hoisted" (the raw loop plus every check virtq makes, inlined, ring checks at
# enable: the safe limit, a yardstick and not a product), packed against split, RegionTable (two
# regions) against one HostRegion, `drain` against the same loop by hand, rust-vmm against
# virtq. Extra columns: virtq with batched completion (one used.idx store per batch). Then the
# idle transition (group idle: one empty pop with kicks on, without and with EVENT_IDX).
# Instruction counts, which do not drift with the machine's load: .ci/bench-icount.sh.
#
# Usage: .ci/bench-table.sh            (a few minutes on 2 cores, most of it the LTO build)
#        PROFILES=default .ci/bench-table.sh   (skip the LTO run)
#        RUNS=3 .ci/bench-table.sh       (each cell: the lowest median of 3 runs; steadier on a
#                                         busy machine, about 2 more minutes per extra run)
# Numbers are criterion medians of per-chain time (see bench/benches/queue.rs for the method).
# Nothing here asserts on time: the machine is shared and drifts by ±20 %.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

target=${CARGO_TARGET_DIR:-$PWD/target}
profiles=${PROFILES:-"default lto"}
runs=${RUNS:-1}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run() { # $1 = profile name, $2 = run number; writes criterion results under $out/$1.$2
    local name=$1
    local -a env=("CRITERION_HOME=$out/$name.$2")
    if [ "$name" = lto ]; then
        # A separate target dir, so switching profiles does not rebuild the other one.
        env+=("CARGO_TARGET_DIR=$target/bench-lto" "CARGO_PROFILE_BENCH_LTO=fat"
            "CARGO_PROFILE_BENCH_CODEGEN_UNITS=1")
    else
        env+=("CARGO_TARGET_DIR=$target")
    fi
    echo "== $name, run $2: cargo bench -p virtq-bench --bench queue -- '^(split-|idle/)'" >&2
    env "${env[@]}" cargo bench --quiet -p virtq-bench --bench queue -- '^(split-|idle/)' >"$out/$name.$2.log" 2>&1 || {
        cat "$out/$name.$2.log" >&2
        exit 1
    }
}

# Median point estimate (ns per chain) of one benchmark, the lowest over the runs.
median() { # $1 = profile, $2 = group, $3 = function
    local k f best=n/a v
    for ((k = 1; k <= runs; k++)); do
        f="$out/$1.$k/$2/$3/new/estimates.json"
        [ -f "$f" ] || continue
        v=$(sed -E 's/.*"median":\{"confidence_interval":\{[^}]*\},"point_estimate":([0-9.eE+-]+).*/\1/' "$f")
        best=$(awk -v a="$best" -v b="$v" 'BEGIN { print (a == "n/a" || b + 0 < a + 0) ? b : a }')
    done
    echo "$best"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
fmt() { awk -v a="$1" 'BEGIN { if (a+0 > 0) printf "%.1f", a; else print "n/a" }'; }

for p in $profiles; do for ((k = 1; k <= runs; k++)); do run "$p" "$k"; done; done

echo
echo "ns per chain (criterion median, lowest of $runs run(s)), ring of 256, device side only; $(nproc) CPUs, $(lscpu | sed -nE 's/^Model name:[[:space:]]+//p')"
echo
echo "| profile | workload | virtq | packed | RegionTable | batched | drain | hand | rust-vmm | raw | raw checked hoisted | virtq / hoisted | packed / virtq | RegionTable / virtq | drain / hand | rust-vmm / virtq |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
label_of() { case $1 in default) echo "bench (release)" ;; lto) echo "LTO fat, 1 CGU" ;; *) echo "$1" ;; esac; }
for p in $profiles; do
    for w in A-1desc B-blk3 C-indirect3; do
        g=split-$w
        v=$(median "$p" "$g" virtq)
        vp=$(median "$p" "$g" virtq-packed)
        vr=$(median "$p" "$g" virtq-regions)
        vb=$(median "$p" "$g" virtq-batched)
        vd=$(median "$p" "$g" virtq-drain)
        vh=$(median "$p" "$g" virtq-hand)
        m=$(median "$p" "$g" rust-vmm)
        r=$(median "$p" "$g" raw)
        rh=$(median "$p" "$g" raw-checked-hoisted)
        echo "| $(label_of "$p") | $w | $(fmt "$v") | $(fmt "$vp") | $(fmt "$vr") | $(fmt "$vb") | $(fmt "$vd") | $(fmt "$vh") | $(fmt "$m") | $(fmt "$r") | $(fmt "$rh") | $(ratio "$v" "$rh") | $(ratio "$vp" "$v") | $(ratio "$vr" "$v") | $(ratio "$vd" "$vh") | $(ratio "$m" "$v") |"
    done
done
echo
echo "Idle transition: ns per empty pop_avail with kicks enabled (criterion median)"
echo
echo "| profile | split | split, EVENT_IDX (re-arm) | packed | packed, EVENT_IDX (re-arm) |"
echo "|---|---:|---:|---:|---:|"
for p in $profiles; do
    echo "| $(label_of "$p") | $(fmt "$(median "$p" idle split-plain)") | $(fmt "$(median "$p" idle split-event-idx)") | $(fmt "$(median "$p" idle packed-plain)") | $(fmt "$(median "$p" idle packed-event-idx)") |"
done
