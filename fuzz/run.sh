#!/usr/bin/env bash
# Run the virtq fuzz targets. Usage: fuzz/run.sh [seconds-per-target] [target...]
#   fuzz/run.sh            # every target for 10 minutes
#   fuzz/run.sh 30         # the CI smoke run
#   fuzz/run.sh 3600 model # one target for an hour
# New inputs go to fuzz/corpus/<target>/ (minimise with `cargo fuzz cmin <target>`);
# a crash stops the run, leaves the input in fuzz/artifacts/<target>/ and fails the script.
# FUZZ_KEEP_CORPUS=1 (CI) writes new inputs to a scratch directory instead.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="$(mktemp)"
    dirs=("corpus/$t")
    if [ -n "${FUZZ_KEEP_CORPUS:-}" ]; then
        scratch="$(mktemp -d)"
        dirs=("$scratch" "corpus/$t")
    fi
    echo "--- $t (${secs}s)"
    if cargo fuzz run "$t" "${dirs[@]}" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -E "DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|stat::peak_rss_mb" "$log" || tail -3 "$log"
    else
        echo "!!! $t failed:"; grep -E "panicked|ERROR|SUMMARY|Test unit written" -A4 "$log" | head -40
        status=1
    fi
    rm -f "$log"
    [ -n "${scratch:-}" ] && rm -rf "$scratch"
done
exit $status
