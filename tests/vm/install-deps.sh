#!/usr/bin/env bash
# Installs the Debian packages the VM harness needs on the host.
#
#   tests/vm/install-deps.sh           install whatever is missing (needs root)
#   tests/vm/install-deps.sh --check   only report; exit 1 if something is missing
#
# Idempotent and quick when everything is present: it asks dpkg first and only
# then touches apt. The guest kernel is NOT installed here: tests/vm/lib.sh
# downloads and unpacks it under target/vm/ on first use.
set -euo pipefail

# qemu-system-x86   the VM (TCG; KVM is optional and not assumed)
# busybox-static    the guest's userland (/bin/sh, mount, ip, dd, ...)
# cpio              packing the initramfs
# xz-utils zstd     decompressing kernel modules (Debian ships them .ko.xz)
# gcc libc6-dev     the static memory hog helper (tests/vm/guest/hog.c)
# binutils          readelf, to check that guest binaries are static
# util-linux        flock, setsid
readonly PACKAGES=(qemu-system-x86 busybox-static cpio xz-utils zstd gcc libc6-dev binutils util-linux)

missing=()
for package in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$package")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "vm deps: all present (${PACKAGES[*]})" >&2
    exit 0
fi
if [[ ${1:-} == --check ]]; then
    echo "vm deps: missing ${missing[*]} (run: sudo tests/vm/install-deps.sh)" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "vm deps: missing ${missing[*]}; rerun as root: sudo $0" >&2
    exit 1
fi

echo "vm deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# An install straight from possibly stale lists fails on a fresh machine
# (404s on superseded versions), so refresh them once before installing.
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
