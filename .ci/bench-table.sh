#!/usr/bin/env bash
# Print ONE table: device-side ns per chain for virtq, rust-vmm virtio-queue 0.18 and a raw
# unchecked loop (bench/benches/queue.rs, groups split-*), with the ratios virtq/raw and
# rust-vmm/virtq, for the default bench profile and for fat LTO + one codegen unit. Extra
# columns: virtq with batched completion (one used.idx store per batch), over a RegionTable of
# two regions instead of one HostRegion, and on the packed ring (all with every check on); and
# "raw checked", the raw loop plus every check virtq makes, inlined (a yardstick, not a product).
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
    echo "== $name, run $2: cargo bench -p virtq-bench --bench queue -- '^split-'" >&2
    env "${env[@]}" cargo bench --quiet -p virtq-bench --bench queue -- '^split-' >"$out/$name.$2.log" 2>&1 || {
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

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.1f", a / b; else print "n/a" }'; }
fmt() { awk -v a="$1" 'BEGIN { if (a+0 > 0) printf "%.1f", a; else print "n/a" }'; }

for p in $profiles; do for ((k = 1; k <= runs; k++)); do run "$p" "$k"; done; done

echo
echo "ns per chain (criterion median, lowest of $runs run(s)), ring of 256, device side only; $(nproc) CPUs, $(lscpu | sed -nE 's/^Model name:[[:space:]]+//p')"
echo
echo "| profile | workload | virtq | virtq batched | virtq RegionTable | virtq packed | rust-vmm | raw | raw checked | virtq/raw | rust-vmm/virtq |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for p in $profiles; do
    label=$p
    [ "$p" = default ] && label="bench (release)"
    [ "$p" = lto ] && label="LTO fat, 1 CGU"
    for w in A-1desc B-blk3 C-indirect3; do
        g=split-$w
        v=$(median "$p" "$g" virtq)
        vb=$(median "$p" "$g" virtq-batched)
        vr=$(median "$p" "$g" virtq-regions)
        vp=$(median "$p" "$g" virtq-packed)
        m=$(median "$p" "$g" rust-vmm)
        r=$(median "$p" "$g" raw)
        rc=$(median "$p" "$g" raw-checked)
        echo "| $label | $w | $(fmt "$v") | $(fmt "$vb") | $(fmt "$vr") | $(fmt "$vp") | $(fmt "$m") | $(fmt "$r") | $(fmt "$rc") | $(ratio "$v" "$r") | $(ratio "$m" "$v") |"
    done
done
