#!/usr/bin/env bash
# What an isolation option costs on the VM harness's kernel (Debian's 6.12
# under QEMU TCG), against no isolation, in turns:
#
#   benches/vm_isolation.sh [ACTIONS] [ISOLATION_JSONNET]
#
# ACTIONS (default 41) Runs of /bin/true through `rbe-runner exec` against a
# runner served from the VM (tests/vm/serve), first without isolation, then
# with ISOLATION_JSONNET (default "{ network: 'off' }") as the `isolation`
# field, then without again. Prints, for each, the median and spread of
#   - the action's wall time as the guest runner logs it (spawn to exit,
#     inside the guest: what the option adds), and
#   - the client's round trip on the host (a new `rbe-runner exec` process
#     each time, over the VM's forwarded TCP port).
# Under TCG the guest runs far slower than the host: compare the options
# with each other, not with the host's figures. Needs what tests/vm needs
# (tests/vm/install-deps.sh) and a release build of rbe-runner for the
# client (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
actions=${1:-41}
isolation=${2:-"{ network: 'off' }"}
client=target/release/rbe-runner
[[ -x $client ]] || { echo "vm_isolation: build the client first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# measure NAME ISOLATION PORT: one served runner, $actions Runs.
measure() {
    local name=$1 isolation=$2 port=$3
    local build=$work/build-$name
    mkdir -p "$build"
    cat >"$work/$name.jsonnet" <<EOF
{
  buildDirectoryPath: 'replaced by tests/vm/serve',
  grpcServers: [{ listenPaths: ['replaced by tests/vm/serve'], authenticationPolicy: { allow: {} } }],
  ${isolation:+isolation: $isolation,}
}
EOF
    tests/vm/serve --config "$work/$name.jsonnet" --build-dir "$build" --port "$port" \
        >"$work/$name.ready" 2>"$work/$name.log" &
    local serving=$!
    local waited=0
    until grep -q READY "$work/$name.ready"; do
        if ! kill -0 "$serving" 2>/dev/null || ((waited++ > 900)); then
            echo "vm_isolation: the $name runner did not start:" >&2
            tail -20 "$work/$name.log" >&2
            exit 1
        fi
        sleep 1
    done
    : >"$work/$name.round-trips"
    for _ in $(seq "$actions"); do
        local start end
        start=$(date +%s%N)
        "$client" exec --address "127.0.0.1:$port" --build-dir "$build" -- /bin/true >"$work/$name.out"
        end=$(date +%s%N)
        grep -q '"exitCode":0\|"resourceUsage"' "$work/$name.out" ||
            { echo "vm_isolation: a $name Run failed:" >&2; cat "$work/$name.out" >&2; exit 1; }
        echo $(((end - start) / 1000)) >>"$work/$name.round-trips"
    done
    kill -TERM "$serving"
    wait "$serving" || true
    grep -o 'wall_time=[0-9.]*[mµ]*s' "$work/$name.log" | sed 's/wall_time=//' |
        awk '/ms$/ { print $0 * 1000; next } /µs$/ { print $0 + 0; next } { print $0 * 1000000 }' \
            >"$work/$name.walls"
    printf '%-8s %s\n' "$name" "$(summary "$work/$name.walls") in the guest; $(summary "$work/$name.round-trips") round trip on the host"
}

# summary FILE: median, 10th and 90th percentile of the µs in FILE.
summary() {
    sort -n "$1" | awk '{ v[NR] = $1 } END {
        printf "p50 %d µs (p10 %d, p90 %d, n=%d)", v[int(NR / 2) + 1], v[int(NR / 10) + 1], v[int(NR * 0.9)], NR }'
}

echo "vm_isolation: $actions Runs of /bin/true each; isolation: $isolation"
measure plain "" 8991
measure isolated "$isolation" 8992
measure plain "" 8993
