#!/usr/bin/env bash
# Runs the twill benchmarks (all, or the ones named), prints a table and
# writes bench/RESULTS.md and bench/latency.svg.
#   scripts/bench.sh [--quick] [cni] [converge] [storm] [datapath] [footprint] [probe] [scale] [wireguard] [micro]
#   storm: N agents started at once (N = 100, 250, 500; TWILL_STORM_SIZES=100,250
#   for others); converge sizes can be set with TWILL_CONVERGE_SIZES=3.
# Needs root: the benchmarks build clusters out of network namespaces.
set -euo pipefail

die() { echo "bench.sh: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root: the benchmarks create network namespaces"
cd "$(dirname "$0")/.."

ALL=(cni converge storm datapath footprint probe scale wireguard)
quick=()
selected=()
micro=0
for a in "$@"; do
    case "$a" in
        --quick) quick=(--quick) ;;
        micro) micro=1 ;;
        cni|converge|storm|datapath|footprint|probe|scale|wireguard) selected+=("$a") ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
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
echo "== the CNI plugin as shipped (static)"
scripts/build-cni.sh

out=target/bench-results
mkdir -p "$out"
# Results of benchmarks not run this time would mix two runs in one report.
for b in "${selected[@]}"; do rm -f "$out/$b.json"; done
if ((micro)); then rm -f "$out/micro.json"; fi
if ((${#selected[@]} == ${#ALL[@]})); then rm -f "$out"/*.json; fi

bench=target/release/twill-bench
status=0
# PIDs of the benchmark processes: their namespaces are tw<pid hex>x<n>-...,
# so the leak check below looks at ours only (the machine may be running
# other people's netns tests at the same time).
# Run in the foreground (Ctrl-C must reach it): sh writes its PID, then
# becomes the benchmark with exec, keeping that PID.
pids=()
run_bench() {
    local rc=0
    sh -c 'echo $$ >"$0"; exec "$@"' "$out/.pid" "$bench" "$@" || rc=$?
    if [[ -s "$out/.pid" ]]; then pids+=("$(cat "$out/.pid")"); fi
    rm -f "$out/.pid"
    return "$rc"
}
for b in "${selected[@]}"; do
    echo "== benchmark $b"
    if ! run_bench "${quick[@]}" --out "$out" --bin-dir target/release --cni-bin target/cni/twill "$b"; then
        echo "bench.sh: benchmark $b failed" >&2
        status=1
    fi
done

if ((micro)); then
    echo "== criterion micro-benchmarks"
    # Results criterion left from older runs must not enter this report.
    touch "$out/.micro-start"
    micro_ok=1
    if ((${#quick[@]})); then
        cargo bench -p twill-bench --bench micro -- --warm-up-time 1 --measurement-time 2 || micro_ok=0
    else
        cargo bench -p twill-bench --bench micro || micro_ok=0
    fi
    if ((micro_ok)); then
        "$bench" "${quick[@]}" --out "$out" micro --criterion-dir target/criterion \
            --newer-than "$out/.micro-start" || status=1
    else
        status=1
    fi
fi

if ((${#selected[@]} || micro)); then
    echo "== report"
    "$bench" "${quick[@]}" --out "$out" report --markdown bench/RESULTS.md --chart bench/latency.svg || status=1
fi

leaked=""
for pid in "${pids[@]}"; do
    mine=$(ip netns list | awk '{print $1}' | grep -E "^tw$(printf '%x' "$pid")x[0-9]+-" || true)
    [[ -z "$mine" ]] || leaked+="$mine"$'\n'
done
[[ -z "$leaked" ]] || die "benchmarks leaked network namespaces:
$leaked"
exit "$status"
