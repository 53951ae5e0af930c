#!/usr/bin/env bash
# Installs what building and testing twill needs on Debian 12, skipping
# packages already present. Must run as root. Never downloads Rust itself.
set -euo pipefail

PACKAGES=(etcd-server etcd-client protobuf-compiler iproute2 iputils-ping nftables
          iperf3 containernetworking-plugins build-essential pkg-config openssl
          util-linux podman runc conmon catatonit uidmap busybox-static
          mmdebstrap python3)

die() { echo "install-deps: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get install needs it)"
command -v dpkg-query >/dev/null || die "dpkg-query not found: this script supports Debian/Ubuntu only"

# Tools that other packages may already provide under the same name (a
# kubectl from another source would clash with Debian's package).
command -v kubectl >/dev/null || PACKAGES+=(kubernetes-client)
command -v systemd-analyze >/dev/null || PACKAGES+=(systemd)

missing=()
for p in "${PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "install-deps: all packages present"
fi

for bin in ip etcd etcdctl protoc ping openssl nsenter unshare podman runc busybox nft kubectl systemd-analyze \
           mmdebstrap; do
    command -v "$bin" >/dev/null || die "$bin still not in PATH after installing packages"
done

if ! command -v cargo >/dev/null; then
    die "cargo not found. Install a Rust toolchain (>= 1.85), e.g. with the rustup
installer from https://rustup.rs (as the user who builds), or 'apt-get install cargo'
if Debian's version is recent enough, then re-run."
fi
echo "install-deps: ok ($(cargo --version))"
