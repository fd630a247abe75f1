# Shared pieces of the VM harness; sourced by tests/vm/build, run and serve.
#
# Everything built or downloaded lives under target/vm/ (gitignored):
#   kernel/<version>/   Debian's linux-image deb, unpacked (never installed)
#   cargo/              a separate cargo target dir for the static runner
#   hog                 the static memory hog
#   initramfs.cpio      busybox + runner + hog + guest scripts + modules
# Each boot gets a run directory, shared with the guest as /rbe-vm:
#   params        written here, sourced by the guest's /init
#   results/      written by the guest: scenario outputs, dmesg.txt
#   runner.log    the guest runner's stdout and stderr (serve)
#   console.log   the serial console: kernel messages and "RBE-VM: ..." markers
#   qemu.log      QEMU's own stdout and stderr
#
# shellcheck shell=bash

VM_SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$VM_SOURCE_DIR/../.." && pwd)
VM_CACHE_DIR=${RBE_VM_CACHE_DIR:-$REPO_DIR/target/vm}

# Debian's generic flavour: unlike cloud-amd64 it ships the 9p modules.
readonly KERNEL_PACKAGE_PATTERN='^linux-image-6\.12\.[0-9]+\+deb12-amd64$'
# Loaded in the guest in this order, with their dependencies first.
readonly GUEST_MODULES=(9pnet_virtio 9p virtio_net)
# The port the runner listens on inside the guest, for `serve`.
readonly GUEST_RUNNER_PORT=8991

log() { echo "vm: $*" >&2; }
die() { echo "vm: error: $*" >&2; exit 1; }

# Serialises builds and boots across processes (two `cargo test` runs, a
# test and `serve`): the cache is shared and the machine has two cores.
vm_lock() {
    mkdir -p "$VM_CACHE_DIR"
    exec {VM_LOCK_FD}>"$VM_CACHE_DIR/.lock"
    if ! flock -n "$VM_LOCK_FD"; then
        log "waiting for another VM harness process (lock $VM_CACHE_DIR/.lock)"
        flock "$VM_LOCK_FD"
    fi
}

vm_check_tools() {
    local missing=() tool
    for tool in qemu-system-x86_64 cpio gcc readelf flock setsid timeout apt-get dpkg-deb xz zstd; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [[ -x /bin/busybox ]] || missing+=("/bin/busybox")
    [[ ${#missing[@]} -eq 0 ]] || die "missing ${missing[*]}; run: sudo tests/vm/install-deps.sh"
    if readelf -lW /bin/busybox | grep -q 'program interpreter'; then
        die "/bin/busybox is dynamically linked; install busybox-static (tests/vm/install-deps.sh)"
    fi
}

# ---------------------------------------------------------------------------
# Kernel

# Prints the newest linux-image-6.12.*+deb12-amd64 version apt knows, or
# nothing. Run time, not pinned: bookworm-security drops old ones.
kernel_newest_available() {
    apt-cache search --names-only "$KERNEL_PACKAGE_PATTERN" 2>/dev/null |
        sed -n 's/^linux-image-\(6\.12\.[0-9]*+deb12\)-amd64 .*/\1-amd64/p' |
        sort -V | tail -n 1
}

kernel_newest_cached() {
    local dir
    for dir in "$VM_CACHE_DIR"/kernel/*/; do
        [[ -f $dir/.complete ]] && basename "$dir"
    done | sort -V | tail -n 1
}

# kernel_download VERSION: downloads linux-image-VERSION and unpacks it
# into the cache, replacing older versions. Fails (returns 1) quietly
# enough for the caller to try something else.
kernel_download() {
    local version=$1 dir=$VM_CACHE_DIR/kernel/$1 download apt_options=()
    log "fetching kernel linux-image-$version (download and unpack only, not installed)"
    mkdir -p "$VM_CACHE_DIR/kernel"
    download=$(mktemp -d "$VM_CACHE_DIR/kernel-download.XXXXXX") || return 1
    # As root apt would hand the download to its _apt user, who may not
    # write here; apt verifies the file either way.
    [[ $(id -u) -ne 0 ]] || apt_options=(-o APT::Sandbox::User=root)
    if ! (cd "$download" && apt-get download -q "${apt_options[@]}" "linux-image-$version" >&2); then
        log "apt-get download linux-image-$version failed"
        rm -rf "$download"
        return 1
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    if ! dpkg-deb -x "$download"/linux-image-"$version"_*.deb "$dir"; then
        log "unpacking linux-image-$version failed"
        rm -rf "$download" "$dir"
        return 1
    fi
    rm -rf "$download"
    touch "$dir/.complete"
    # Older versions are dead weight (hundreds of MB of modules each).
    local old
    for old in "$VM_CACHE_DIR"/kernel/*/; do
        [[ ${old%/} == "$dir" ]] || rm -rf "${old%/}"
    done
}

# Sets KERNEL_VERSION, KERNEL_IMAGE and KERNEL_MODULES_DIR: the newest
# kernel apt offers, downloaded if not cached yet. Stale apt lists are
# refreshed once when running as root; without a network the newest cached
# kernel is used, with a warning.
kernel_fetch() {
    rm -rf "$VM_CACHE_DIR"/kernel-download.* # an interrupted download's
    local version cached
    version=$(kernel_newest_available)
    if [[ -n $version && -f $VM_CACHE_DIR/kernel/$version/.complete ]]; then
        :
    elif [[ -n $version ]] && kernel_download "$version"; then
        :
    else
        version=''
        if [[ $(id -u) -eq 0 ]]; then
            log "refreshing apt's lists (apt-get update) and retrying"
            apt-get update -q >&2 || log "apt-get update failed"
            version=$(kernel_newest_available)
            if [[ -n $version && ! -f $VM_CACHE_DIR/kernel/$version/.complete ]]; then
                kernel_download "$version" || version=''
            fi
        fi
        if [[ -z $version ]]; then
            cached=$(kernel_newest_cached)
            [[ -n $cached ]] ||
                die "cannot get a linux-image-6.12.*+deb12-amd64 (none in apt's lists or download failed; none cached)"
            log "warning: using the cached kernel $cached; apt offers no newer one that downloads"
            version=$cached
        fi
    fi

    local dir=$VM_CACHE_DIR/kernel/$version
    KERNEL_VERSION=$version
    KERNEL_IMAGE=$dir/boot/vmlinuz-$version
    KERNEL_MODULES_DIR=$dir/lib/modules/$version
    [[ -f $KERNEL_IMAGE && -f $KERNEL_MODULES_DIR/modules.order ]] ||
        die "kernel cache $dir is incomplete; delete it and retry"
}

# Writes module NAME's file, decompressed, to stdout.
kernel_module_contents() {
    local name=$1 order_path path
    # modules.order lists every module the package ships, uncompressed names;
    # modules.dep is not: depmod writes it when the package is installed.
    order_path=$(grep -m 1 -E "/${name//_/[-_]}\.ko\$" "$KERNEL_MODULES_DIR/modules.order") ||
        die "module $name is not in $KERNEL_MODULES_DIR/modules.order"
    path=$KERNEL_MODULES_DIR/$order_path
    if [[ -f $path.xz ]]; then xz -dc "$path.xz"
    elif [[ -f $path.zst ]]; then zstd -qdc "$path.zst"
    elif [[ -f $path.gz ]]; then gzip -dc "$path.gz"
    elif [[ -f $path ]]; then cat "$path"
    else die "module file $path(.xz|.zst|.gz) is missing"
    fi
}

# Unpacks the named modules and their dependencies into DIR as NAME.ko and
# writes DIR/load-order: each module after the ones it depends on.
kernel_modules_install() {
    local dir=$1
    shift
    local -A seen=()
    _module_visit() {
        local name=${1//-/_} depends dep
        [[ -z ${seen[$name]:-} ]] || return 0
        seen[$name]=1
        kernel_module_contents "$name" >"$dir/$name.ko" || exit 1
        # The .modinfo section holds NUL-separated key=value strings.
        depends=$(tr '\0' '\n' <"$dir/$name.ko" | sed -n 's/^depends=//p' | head -n 1)
        for dep in ${depends//,/ }; do _module_visit "$dep"; done
        echo "$name" >>"$dir/load-order"
    }
    : >"$dir/load-order"
    local module
    for module in "$@"; do _module_visit "$module"; done
}

# ---------------------------------------------------------------------------
# Guest binaries and the initramfs

# Sets RUNNER_BIN to a static rbe-runner: RBE_VM_RUNNER_BIN if given, else a
# dev-profile build by tools/build-static with its own target dir, so that it
# does not wait on (or invalidate) the outer `cargo test`'s target dir. The
# minimal-root test (tests/deployment.rs) builds the same way, in the same
# directory, so CI builds the static runner once.
build_runner() {
    if [[ -n ${RBE_VM_RUNNER_BIN:-} ]]; then
        RUNNER_BIN=$RBE_VM_RUNNER_BIN
        log "using RBE_VM_RUNNER_BIN=$RUNNER_BIN"
    else
        log "building static rbe-runner (target/vm/cargo)"
        RUNNER_BIN=$("$REPO_DIR/tools/build-static" --profile dev --target-dir "$VM_CACHE_DIR/cargo") ||
            die "building the static rbe-runner failed"
    fi
    [[ -x $RUNNER_BIN ]] || die "runner binary $RUNNER_BIN does not exist"
    if readelf -lW "$RUNNER_BIN" 2>/dev/null | grep -q 'program interpreter'; then
        die "$RUNNER_BIN is dynamically linked; the initramfs has no libc"
    fi
}

build_hog() {
    HOG_BIN=$VM_CACHE_DIR/hog
    local source=$VM_SOURCE_DIR/guest/hog.c
    if [[ ! -x $HOG_BIN || $source -nt $HOG_BIN ]]; then
        log "building static hog"
        gcc -O2 -Wall -Werror -static -o "$HOG_BIN.tmp" "$source" || die "compiling $source failed"
        mv "$HOG_BIN.tmp" "$HOG_BIN"
    fi
}

# Sets INITRAMFS, rebuilding it when any input changed (by path, size or
# modification time; RBE_VM_RUNNER_BIN switching binaries counts).
build_initramfs() {
    INITRAMFS=$VM_CACHE_DIR/initramfs.cpio
    local stamp=$VM_CACHE_DIR/initramfs.inputs inputs
    inputs=$(
        stat -c '%n %s %y' /bin/busybox "$RUNNER_BIN" "$HOG_BIN" \
            "$KERNEL_MODULES_DIR/modules.order" "$VM_SOURCE_DIR/lib.sh"
        find "$VM_SOURCE_DIR/guest" -type f -exec stat -c '%n %s %y' {} + | LC_ALL=C sort
    ) || die "cannot stat the initramfs inputs"
    if [[ -f $INITRAMFS && -f $stamp && $(<"$stamp") == "$inputs" ]]; then
        return
    fi

    # A fixed path: builds hold the lock, and a crashed build's leftovers
    # are simply replaced.
    local stage=$VM_CACHE_DIR/initramfs-stage
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,lib/modules,scenarios,rbe-vm}
    cp /bin/busybox "$stage/bin/busybox"
    cp "$RUNNER_BIN" "$stage/bin/rbe-runner"
    cp "$HOG_BIN" "$stage/bin/hog"
    cp "$VM_SOURCE_DIR/guest/init" "$stage/init"
    cp "$VM_SOURCE_DIR/guest/lib.sh" "$stage/lib/rbe-vm.sh"
    cp "$VM_SOURCE_DIR"/guest/scenarios/* "$stage/scenarios/"
    chmod 0755 "$stage/init" "$stage/bin/"*

    kernel_modules_install "$stage/lib/modules" "${GUEST_MODULES[@]}"

    # Uncompressed: gzip -1 made no measurable difference to boot time
    # (2.8-4.8 s to /init either way under TCG), so skip the work.
    (cd "$stage" && find . -print0 | LC_ALL=C sort -z |
        cpio --null --create --format=newc --quiet --owner=0:0) >"$INITRAMFS.tmp" ||
        die "packing the initramfs failed"
    mv "$INITRAMFS.tmp" "$INITRAMFS"
    printf '%s\n' "$inputs" >"$stamp"
    rm -rf "$stage"
}

# Everything a boot needs; sets KERNEL_IMAGE, INITRAMFS and friends.
vm_build() {
    vm_check_tools
    kernel_fetch
    build_runner
    build_hog
    build_initramfs
    log "kernel $KERNEL_VERSION, initramfs $(du -h "$INITRAMFS" | cut -f1)"
}

# ---------------------------------------------------------------------------
# Booting

# Quotes $1 for a POSIX shell (the guest's busybox sh sources params files).
shell_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# Escapes commas for a QEMU option value.
qemu_escape() { printf '%s' "${1//,/,,}"; }

# Prints a new run directory under target/vm/runs, first removing those
# older than a day: failed runs are kept there for inspection.
vm_new_run_dir() {
    mkdir -p "$VM_CACHE_DIR/runs"
    find "$VM_CACHE_DIR/runs" -mindepth 1 -maxdepth 1 -mtime +0 -exec rm -rf {} + 2>/dev/null || true
    mktemp -d "$VM_CACHE_DIR/runs/$1.XXXXXX"
}

# Prepares RUN_DIR for a boot; callers then add guest parameters with
# vm_param, shares with vm_share, and so on.
vm_prepare_run_dir() {
    RUN_DIR=$1
    mkdir -p "$RUN_DIR/results"
    : >"$RUN_DIR/params"
    : >"$RUN_DIR/console.log"
    VM_EXTRA_MOUNTS=0
    QEMU_EXTRA_ARGS=()
}

# vm_param NAME VALUE: a variable the guest's /init sources.
vm_param() { printf '%s=%s\n' "$1" "$(shell_quote "$2")" >>"$RUN_DIR/params"; }

# vm_share HOSTDIR ro|rw: shares HOSTDIR, mounted at the same path in the guest.
vm_share() {
    local host_dir=$1 access=$2
    VM_EXTRA_MOUNTS=$((VM_EXTRA_MOUNTS + 1))
    local tag=share$VM_EXTRA_MOUNTS readonly=off
    [[ $access == ro ]] && readonly=on
    QEMU_EXTRA_ARGS+=(-virtfs "local,path=$(qemu_escape "$host_dir"),mount_tag=$tag,security_model=none,readonly=$readonly")
    vm_param "RBE_VM_MOUNT_${VM_EXTRA_MOUNTS}_TAG" "$tag"
    vm_param "RBE_VM_MOUNT_${VM_EXTRA_MOUNTS}_PATH" "$host_dir"
    vm_param "RBE_VM_MOUNT_${VM_EXTRA_MOUNTS}_ACCESS" "$access"
    vm_param RBE_VM_MOUNT_COUNT "$VM_EXTRA_MOUNTS"
}

# vm_forward_port HOSTPORT: 127.0.0.1:HOSTPORT on the host reaches the
# runner's port in the guest. restrict=on: the guest can reach nothing else.
vm_forward_port() {
    # shellcheck disable=SC2054  # the commas belong to QEMU's option syntax
    QEMU_EXTRA_ARGS+=(
        -netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$1-:$GUEST_RUNNER_PORT"
        -device virtio-net-pci,netdev=net0
    )
    vm_param RBE_VM_NETWORK 1
}

# Sets QEMU_ARGS, the command line that boots RUN_DIR's guest with MEMORY.
vm_qemu_args() {
    local memory=$1 accel
    case ${RBE_VM_ACCEL:-tcg} in
        # thread=single: multi-threaded TCG races when the kernel patches its
        # own code on one vCPU while another executes it (seen here once as
        # an "Oops: int3" in sched_clock_cpu during boot, a guest panic that
        # failed a CI run). Round-robin vCPUs keep two CPUs for the guest's
        # concurrency without that race.
        tcg) accel=(-accel tcg,thread=single -cpu max) ;;
        kvm) accel=(-accel kvm -cpu host) ;;
        *) die "RBE_VM_ACCEL must be tcg or kvm" ;;
    esac
    # shellcheck disable=SC2034  # for the caller
    QEMU_ARGS=(
        qemu-system-x86_64 "${accel[@]}" -m "$memory" -smp 2
        -nodefaults -no-user-config -display none -monitor none -no-reboot
        -chardev "file,id=console,path=$(qemu_escape "$RUN_DIR/console.log")" -serial chardev:console
        -kernel "$KERNEL_IMAGE" -initrd "$INITRAMFS"
        -append "console=ttyS0 panic=-1 loglevel=4 edd=off"
        -virtfs "local,path=$(qemu_escape "$RUN_DIR"),mount_tag=rbevm,security_model=none"
        "${QEMU_EXTRA_ARGS[@]}"
    )
}

# Prints the guest's markers ("RBE-VM: ..." lines) from the console log,
# without the prefix.
vm_markers() { sed -n 's/\r$//; s/^.*RBE-VM: //p' "$RUN_DIR/console.log"; }

# vm_marker_field MARKER KEY: KEY's value in the first marker line starting
# with MARKER, e.g. vm_marker_field INIT uptime -> 1.85.
vm_marker_field() {
    vm_markers | awk -v marker="$1" -v key="$2" '
        index($0, marker) == 1 {
            for (i = 1; i <= NF; i++) if (index($i, key "=") == 1) { print substr($i, length(key) + 2); exit }
        }'
}

# Prints the last lines of each named file in RUN_DIR that is not empty.
vm_show_logs() {
    local name
    for name in "$@"; do
        [[ -s $RUN_DIR/$name ]] || continue
        echo "----- $RUN_DIR/$name (last 40 lines)" >&2
        tail -n 40 "$RUN_DIR/$name" | sed 's/\r$//' >&2
    done
}
