#!/usr/bin/env bash
# Installs the Debian packages tests/deploy/validate needs on the host.
#
#   tests/deploy/install-deps.sh           install whatever is missing (needs root)
#   tests/deploy/install-deps.sh --check   only report; exit 1 if something is missing
#
# kubernetes-validate is not a Debian package: tests/deploy/validate
# installs it from PyPI into its own virtualenv under target/deploy/.
set -euo pipefail

# docker-compose    `docker-compose config -q` for deploy/docker-compose/
# systemd           `systemd-analyze verify` for deploy/systemd/
# busybox-static    the userland of the minimal root in tests/deployment.rs
# binutils          readelf, to check that binaries are static
readonly PACKAGES=(docker-compose systemd busybox-static binutils)

missing=()
for package in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$package")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "deploy deps: all present (${PACKAGES[*]})" >&2
    exit 0
fi
if [[ ${1:-} == --check ]]; then
    echo "deploy deps: missing ${missing[*]} (run: sudo tests/deploy/install-deps.sh)" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "deploy deps: missing ${missing[*]}; rerun as root: sudo $0" >&2
    exit 1
fi

echo "deploy deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Fresh machines have stale lists (404s on superseded versions).
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
