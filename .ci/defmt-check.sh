#!/usr/bin/env bash
# Every public type of virtq implements defmt::Format under the `defmt` feature.
#
# src/defmt_format.rs names every public type in an `assert_format::<T>()` call, so a
# `--features defmt` build fails if one lacks Format. This script keeps that list complete:
# it fails if a `pub struct` / `pub enum` anywhere under src/ (bitflags types included) is
# not named there. SKIP may name types that are exempt; it is empty.
set -euo pipefail
cd "$(dirname "$0")/.."

SKIP=""
list=src/defmt_format.rs

status=0
names=$(grep -rhoE '^\s*pub (struct|enum) [A-Za-z_][A-Za-z0-9_]*' src | awk '{print $3}' | sort -u)
for name in $names; do
    case " $SKIP " in *" $name "*) continue ;; esac
    if ! grep -qE "assert_format::<([a-z_]+::)*$name\b" "$list"; then
        echo "public type $name is missing from every_public_type in $list" >&2
        status=1
    fi
done
[ "$status" = 0 ] && echo "defmt-check: $(echo "$names" | wc -w) public types, all listed (skipped: $SKIP)"
exit "$status"
