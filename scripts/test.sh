#!/usr/bin/env bash
# The full test run: deps, build, fmt, clippy, all tests including the
# netns end-to-end tests (which really run: root is required, CI=true makes a
# missing prerequisite a failure), the node image built and run as the
# DaemonSet runs it, then a check that no test namespace or container leaked.
set -euo pipefail

die() { echo "test.sh: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root: the netns tests create network namespaces"
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# Netns tests must never be skipped here.
export CI=true
# Our namespaces get a prefix of this run's own, so the leak check below sees
# only them, also when other runs on this machine make namespaces.
TWILL_TEST_NS_PREFIX="t$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')"
export TWILL_TEST_NS_PREFIX
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo build --workspace"
cargo build --workspace
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# Before the tests: harness/tests/image.rs runs the DaemonSet from this image.
echo "== the node image (scripts/image.sh)"
image_start=$SECONDS
scripts/image.sh
echo "test.sh: image built in $((SECONDS - image_start)) s"
echo "== cargo test"
# Built binaries (twilld, twill) are found via the target dir by the harness.
status=0
cargo test --workspace || status=$?

echo "== the CNI plugin as it ships (static, scripts/build-cni.sh): its tests again"
scripts/build-cni.sh
TWILL_CNI_BIN="$PWD/target/cni/twill" cargo test -p cni-plugin \
    --test stdin_fuzz --test plugin_netns --test dual_stack --test stress --test podman ||
    status=$?

# Test namespaces are named <prefix><pid hex>x<n>-...; the demo's twdemo- is not ours.
leaked=$(ip netns list | awk '{print $1}' | grep -E "^${TWILL_TEST_NS_PREFIX}[0-9a-f]+x[0-9]+-" || true)
if [[ -n "$leaked" ]]; then
    die "tests leaked network namespaces:
$leaked"
fi
# The image test's containers are named like its namespaces.
leaked=$(podman ps --all --format '{{.Names}}' | grep -E "^${TWILL_TEST_NS_PREFIX}[0-9a-f]+x[0-9]+-" || true)
if [[ -n "$leaked" ]]; then
    die "tests leaked podman containers:
$leaked"
fi
((status == 0)) || die "cargo test failed (exit $status)"
echo "test.sh: all passed, no namespaces left"
