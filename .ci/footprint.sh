#!/usr/bin/env bash
# Code size of virtq on a microcontroller-class target: `.text` bytes of minimal no_std binaries
# (.ci/footprint/: a skeleton without virtq, a split-ring device, the same device on the packed
# ring, and the split device behind the virtio-mmio transport) for thumbv7em-none-eabihf at
# opt-level "s" and 3 (fat LTO, one codegen unit, panic=abort); virtq's share is the difference
# to the skeleton. Also `size_of` of the public state types on that target and on x86_64.
#
# Usage: .ci/footprint.sh      (needs the thumbv7em-none-eabihf and x86_64-unknown-none std
#                               from rust-toolchain.toml; llvm-size or binutils size)
set -euo pipefail
cd "$(dirname "$0")/footprint"
export CARGO_TERM_COLOR=never

target=${CARGO_TARGET_DIR:-$PWD/../../target}/footprint
thumb=thumbv7em-none-eabihf

size_tool=$(command -v llvm-size || command -v size || true)
[ -n "$size_tool" ] || { echo "need llvm-size or size (binutils)" >&2; exit 1; }
nm_tool=$(command -v llvm-nm || command -v nm)
readelf_tool=$(command -v llvm-readelf || command -v readelf)

# Build one probe; a probe that does not build (an API it uses changed) is reported as n/a.
build() { # $1 = opt level, $2 = target triple, $3 = binary
    CARGO_TARGET_DIR="$target/opt-$1" CARGO_PROFILE_RELEASE_OPT_LEVEL="$1" \
        cargo build --quiet --release --target "$2" --bin "$3" || echo "(probe $3 failed to build)" >&2
}

# `.text` bytes of one binary (section-wise, so nothing else is counted).
text() { # $1 = ELF
    "$size_tool" -A "$1" | awk '$1 == ".text" { print $2; found = 1 } END { if (!found) print 0 }'
}

# The u32 table VIRTQ_SIZES of the `sizes` probe, read straight from the ELF file.
sizes() { # $1 = ELF
    local elf=$1 addr len name type saddr soff ssize rest
    read -r addr len < <("$nm_tool" -S "$elf" | awk '$4 == "VIRTQ_SIZES" { print $1, $2 }')
    # The allocated section that holds the symbol gives the file offset.
    while read -r name type saddr soff ssize rest; do
        [[ $saddr$soff$ssize =~ ^[0-9a-fA-F]+$ ]] || continue
        if ((16#$saddr != 0 && 16#$saddr <= 16#$addr && 16#$addr < 16#$saddr + 16#$ssize)); then
            od -An -tu4 -v -j $((16#$soff + 16#$addr - 16#$saddr)) -N $((16#$len)) "$elf" | tr -s ' \n' ' '
            return
        fi
    done < <("$readelf_tool" -SW "$elf" | sed -nE 's/^ *\[ *[0-9]+\] +//p')
}

bin() { echo "$target/opt-$1/$2/release/$3"; }
probes=(baseline split packed mmio)
for o in s 3; do for b in "${probes[@]}"; do build "$o" "$thumb" "$b"; done; done
for t in "$thumb" x86_64-unknown-none; do build s "$t" sizes; done

echo ".text bytes, $thumb, fat LTO, codegen-units=1, panic=abort"
echo
echo "| binary | opt-level \"s\" | opt-level 3 | virtq's share at \"s\" | virtq's share at 3 |"
echo "|---|---:|---:|---:|---:|"
declare -A t
for o in s 3; do
    for b in "${probes[@]}"; do
        f=$(bin "$o" "$thumb" "$b")
        if [ -f "$f" ]; then t[$o,$b]=$(text "$f"); else t[$o,$b]=n/a; fi
    done
done
share() { # $1 = opt, $2 = probe
    if [[ ${t[$1,$2]} =~ ^[0-9]+$ && ${t[$1,baseline]} =~ ^[0-9]+$ ]]; then
        echo $((t[$1,$2] - t[$1,baseline]))
    else echo n/a; fi
}
row() { echo "| $1 | ${t[s,$2]} | ${t[3,$2]} | ${3:-$(share s "$2")} | ${3:-$(share 3 "$2")} |"; }
row "skeleton without virtq (entry, panic handler, config reads)" baseline "—"
row "split ring: pop, walk, write a status byte, push_used (HostRegion, Queue<4>)" split
row "packed ring: the same device loop on PackedQueue" packed
row "virtio-mmio transport + the split device (register file, status, features)" mmio
echo
echo "size_of, bytes"
echo
names=(Queue "Queue<{ in_flight_words(256) }>" PackedQueue "PackedChain (N = 16)" "MmioTransport<(), HostRegion, 1>" DescriptorChain
    "DescriptorIter<HostRegion>" Descriptor HostRegion "RegionTable<4>" QueueError ChainError
    MemoryError)
st=() sx=()
f=$(bin s "$thumb" sizes) && [ -f "$f" ] && read -ra st <<<"$(sizes "$f")"
f=$(bin s x86_64-unknown-none sizes) && [ -f "$f" ] && read -ra sx <<<"$(sizes "$f")"
echo "| type | $thumb | x86_64 |"
echo "|---|---:|---:|"
for i in "${!names[@]}"; do
    echo "| \`${names[$i]}\` | ${st[$i]:-n/a} | ${sx[$i]:-n/a} |"
done
