#!/usr/bin/env bash
# Builds the twill node image from deploy/Dockerfile with nothing pulled from
# a registry:
#   scripts/image.sh [TAG]            # default TAG: localhost/twill:<version>
# 1. the binaries: `cargo build --release -p twill` and scripts/build-cni.sh;
# 2. target/image/rootfs.tar: the Debian packages the Dockerfile names
#    (ARG ROOTFS_PACKAGES, ARG ROOTFS_SUITE), extracted by mmdebstrap from
#    Debian's mirror, pruned; kept between runs and made again only when
#    that list changes or TWILL_IMAGE_REFRESH=1 (for package updates);
# 3. `podman build --pull=never --layers=false -f deploy/Dockerfile` (no
#    intermediate images left behind) on the checkout
#    (.dockerignore lets only those three files in);
# 4. a smoke run of twilld inside the image, and its size.
# Must run as root (mmdebstrap's root mode; the tests use root's podman
# storage). Environment: TWILL_IMAGE_MIRROR (a Debian mirror URL; default:
# mmdebstrap's), TWILL_IMAGE_REFRESH=1.
set -euo pipefail

die() { echo "image.sh: $*" >&2; exit 1; }
cd "$(dirname "$0")/.."

[[ $# -le 1 ]] || die "usage: scripts/image.sh [TAG]"
[[ $(id -u) -eq 0 ]] || die "must run as root: mmdebstrap's root mode and root's podman storage"

# Every missing tool at once, with the Debian package that has it.
missing=()
for tool_pkg in "podman:Debian package podman" "mmdebstrap:Debian package mmdebstrap" \
                "cargo:a Rust toolchain, as scripts/install-deps.sh says" "tar:Debian package tar" \
                "ldconfig:Debian package libc-bin" "sha256sum:Debian package coreutils"; do
    command -v "${tool_pkg%%:*}" >/dev/null || missing+=("${tool_pkg%%:*} (${tool_pkg#*:})")
done
if ((${#missing[@]})); then
    list=$(printf '%s; ' "${missing[@]}")
    die "missing ${list%; }. scripts/install-deps.sh installs the packages"
fi

dockerfile=deploy/Dockerfile
# `ARG NAME=value` or `ARG NAME="a b c"` of the Dockerfile, unquoted.
dockerfile_arg() {
    local v
    v=$(sed -n "s/^ARG $1=//p" "$dockerfile")
    [[ -n $v ]] || die "$dockerfile has no 'ARG $1=...' line"
    v=${v#\"}
    echo "${v%\"}"
}
suite=$(dockerfile_arg ROOTFS_SUITE)
read -r -a packages <<<"$(dockerfile_arg ROOTFS_PACKAGES)"
((${#packages[@]})) || die "ARG ROOTFS_PACKAGES in $dockerfile names no package"

version=$(cargo pkgid -p twill | sed -n 's/.*[#@]\([0-9][^#@]*\)$/\1/p')
[[ -n $version ]] || die "cannot read twill's version from cargo pkgid"
tag=${1:-localhost/twill:$version}

# twilld links the build host's glibc: the image's must be the same release.
host_suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
[[ $host_suite == "$suite" ]] ||
    die "this host is Debian '${host_suite:-unknown}', the image's root filesystem is '$suite' ($dockerfile): twilld must be built on the release the image runs"

echo "== image.sh: binaries"
cargo build --release -p twill
scripts/build-cni.sh

# Reproducible file times in the root filesystem and the image: the last
# commit's time (a constant outside a git checkout).
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 1700000000)
export SOURCE_DATE_EPOCH=$epoch

out=target/image
mkdir -p "$out"
key=$(printf '%s\n' "$suite" "${packages[@]}" "${TWILL_IMAGE_MIRROR:-}" | cat - "$0" | sha256sum | cut -d' ' -f1)
if [[ -f $out/rootfs.tar && "$(cat "$out/rootfs.key" 2>/dev/null)" == "$key" && ${TWILL_IMAGE_REFRESH:-0} != 1 ]]; then
    echo "== image.sh: root filesystem: $out/rootfs.tar (kept: same packages)"
else
    echo "== image.sh: root filesystem: ${packages[*]} from Debian $suite"
    rootfs=$out/rootfs.d
    rm -rf "$rootfs" "$out/rootfs.key"
    mirror=()
    [[ -n ${TWILL_IMAGE_MIRROR:-} ]] && mirror=("$TWILL_IMAGE_MIRROR")
    # extract: unpack the packages and their dependencies, run nothing.
    mmdebstrap --quiet --variant=extract --include="$(IFS=,; echo "${packages[*]}")" \
        --skip=output/dev,output/mknod \
        --dpkgopt='path-exclude=/usr/share/*' \
        --dpkgopt='path-exclude=/usr/lib/*/gconv/*' \
        --dpkgopt='path-exclude=/lib/systemd/*' \
        --format=directory "$suite" "$rootfs" "${mirror[@]}" ||
        die "mmdebstrap failed (is a Debian mirror reachable? set TWILL_IMAGE_MIRROR)"
    # The package manager's state and the files a runtime provides.
    rm -rf "$rootfs"/etc/apt "$rootfs"/etc/dpkg "$rootfs"/var "$rootfs"/usr/share \
        "$rootfs"/lib/systemd "$rootfs"/etc/fstab "$rootfs"/etc/hostname \
        "$rootfs"/etc/resolv.conf "$rootfs"/dev/*
    ldconfig -r "$rootfs"
    tar --sort=name --mtime="@$epoch" --clamp-mtime --owner=0 --group=0 --numeric-owner \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -cf "$out/rootfs.tar.tmp" -C "$rootfs" .
    rm -rf "$rootfs"
    mv "$out/rootfs.tar.tmp" "$out/rootfs.tar"
    echo "$key" >"$out/rootfs.key"
fi

echo "== image.sh: podman build -t $tag"
old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
podman build --quiet --pull=never --layers=false --timestamp "$epoch" -f "$dockerfile" -t "$tag" . >/dev/null
new=$(podman image inspect --format '{{.Id}}' "$tag")
# The image this one replaced, unless something else still uses it.
if [[ -n $old && $old != "$new" ]]; then
    podman rmi "$old" >/dev/null 2>&1 || true
fi

echo "== image.sh: smoke run"
# Within this machine's hard limits: podman's default nofile and nproc may
# exceed them, and runc then refuses to start anything.
nofile=$(ulimit -Hn)
[[ $nofile == unlimited ]] && nofile=1048576
nproc=$(ulimit -Hu)
[[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
run=(podman run --rm --network none --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
"${run[@]}" "$tag" --version || die "twilld does not start inside $tag"

size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "image.sh: $tag ($new), $((size / 1024 / 1024)) MiB ($size bytes)"
