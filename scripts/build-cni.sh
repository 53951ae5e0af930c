#!/usr/bin/env bash
# Builds the CNI plugin as it ships: a static, non-PIE executable at
# target/cni/twill.
#   scripts/build-cni.sh
# Static, because `twilld install-cni` copies the plugin from the image onto
# the host, whose glibc is not the image's. Static and non-PIE, because the
# container runtime starts the plugin once per call: loading shared
# libraries and relocating a PIE cost about 0.4 ms of every ADD
# (bench/RESULTS.md, CNI latency).
set -euo pipefail

die() { echo "build-cni.sh: $*" >&2; exit 1; }
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
[[ $host == *-linux-gnu ]] || die "host target '$host' is not glibc Linux; build the plugin with cargo instead"
# --target keeps these flags off build scripts and proc macros, which must
# stay dynamic, and puts the result under target/$host.
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
    cargo build --release -p cni-plugin --target "$host"
mkdir -p target/cni
cp "target/$host/release/twill" target/cni/twill.tmp
mv target/cni/twill.tmp target/cni/twill
# ldd fails ("not a dynamic executable") on a static binary.
if ldd target/cni/twill >/dev/null 2>&1; then
    die "target/cni/twill came out dynamically linked"
fi
echo "build-cni.sh: target/cni/twill (static)"
