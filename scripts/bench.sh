#!/usr/bin/env bash
# Runs the twill benchmarks (all, or the ones named), prints a table and
# writes bench/RESULTS.md and bench/latency.svg.
#   scripts/bench.sh [--quick] [cni] [converge] [datapath] [footprint] [scale] [micro]
# Needs root: the benchmarks build clusters out of network namespaces.
set -euo pipefail

die() { echo "bench.sh: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root: the benchmarks create network namespaces"
cd "$(dirname "$0")/.."

ALL=(cni converge datapath footprint scale)
quick=()
selected=()
micro=0
for a in "$@"; do
    case "$a" in
        --quick) quick=(--quick) ;;
        micro) micro=1 ;;
        cni|converge|datapath|footprint|scale) selected+=("$a") ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) die "unknown benchmark '$a' (known: ${ALL[*]} micro, option --quick)" ;;
    esac
done
if ((${#selected[@]} == 0 && micro == 0)); then
    selected=("${ALL[@]}")
    micro=1
fi

scripts/install-deps.sh

echo "== cargo build --release"
cargo build --release -p twill -p cni-plugin -p twill-bench

out=target/bench-results
mkdir -p "$out"
# Results of benchmarks not run this time would mix two runs in one report.
for b in "${selected[@]}"; do rm -f "$out/$b.json"; done
if ((${#selected[@]} == ${#ALL[@]})); then rm -f "$out"/*.json; fi

bench=target/release/twill-bench
status=0
for b in "${selected[@]}"; do
    echo "== benchmark $b"
    if ! "$bench" "${quick[@]}" --out "$out" --bin-dir target/release "$b"; then
        echo "bench.sh: benchmark $b failed" >&2
        status=1
    fi
done

if ((micro)); then
    echo "== criterion micro-benchmarks"
    if ((${#quick[@]})); then
        cargo bench -p twill-bench --bench micro -- --warm-up-time 1 --measurement-time 2 || status=1
    else
        cargo bench -p twill-bench --bench micro || status=1
    fi
fi

if ((${#selected[@]})); then
    echo "== report"
    "$bench" "${quick[@]}" --out "$out" report --markdown bench/RESULTS.md --chart bench/latency.svg || status=1
fi

# Benchmark namespaces are named tw<pid hex>x<n>-...
leaked=$(ip netns list | awk '{print $1}' | grep -E '^tw[0-9a-f]+x[0-9]+-' || true)
[[ -z "$leaked" ]] || die "benchmarks leaked network namespaces:
$leaked"
exit "$status"
