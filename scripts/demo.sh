#!/usr/bin/env bash
# Runs the twill demo (etcd + 3 hosts + agents + 2 pods per host in network
# namespaces). `demo.sh --keep` leaves it up until Ctrl-C; `demo.sh --down`
# removes whatever a killed demo left behind. `demo.sh --ipv6-only` (also
# with --keep) runs an IPv6-only cluster on an IPv6-only underlay instead.
set -euo pipefail

PREFIX=twdemo-

die() { echo "demo.sh: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root: the demo creates network namespaces"
cd "$(dirname "$0")/.."

down() {
    local ns pid found=0
    for ns in $(ip netns list | awk '{print $1}' | grep "^${PREFIX}" || true); do
        found=1
        # Processes inside a demo namespace were started by the demo.
        for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
            echo "demo.sh: killing pid $pid in $ns"
            kill -KILL "$pid" 2>/dev/null || true
        done
        echo "demo.sh: deleting netns $ns"
        ip netns del "$ns"
    done
    rm -rf /tmp/"${PREFIX}"* 2>/dev/null || true
    ((found)) || echo "demo.sh: nothing to clean up"
}

if [[ "${1:-}" == "--down" ]]; then
    down
    exit 0
fi

scripts/install-deps.sh
cargo build --workspace
exec target/debug/twill-demo "$@"
