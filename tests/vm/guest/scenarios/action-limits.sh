# Per-action limits and the three OOM verdicts, in one boot (issue 15's
# scenarios a, b, d, e, f, g). Records only; tests/vm.rs asserts.
#
# Runner 1 (action-limits.jsonnet: memoryMax 64M, pidsMax 32, cpuMax 0.5):
#   a+e: `sh -c 'hog 96; exit 3'` reaches its own limit; memory.oom.group
#        kills the shell too, so it never gets to `exit 3`;
#   d:   meanwhile `hog 20` holds its memory until the OOM is over: its
#        verdict must stay NONE;
#   f:   a shell forking 64 sleeps against pids.max 32;
#   g:   a busy loop for 2 s against cpu.max 0.5.
# Runner 2 (action-cgroups.jsonnet: no per-action limit), its cgroup at
# memory.max 128M:
#   b:   `hog 100` holds, then `hog 40` pushes the budget over: the kernel
#        kills the big one, the culprit (normal response);
#   b2:  an action fills a tmpfs with 80 MiB (charged to its cgroup, owned
#        by no process), then `hog 60` pushes the budget over and is killed
#        although it used less than its fair share: a bystander
#        (UNAVAILABLE).
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

SOCKET=/run/runner.sock
# wait_for_file PATH SECONDS
wait_for_file() {
    tries=$(($2 * 10))
    while [ ! -e "$1" ] && [ "$tries" -gt 0 ]; do
        sleep 0.1
        tries=$((tries - 1))
    done
    [ -e "$1" ]
}

mkdir -p /build /tmp/sync
start_runner /scenarios/action-limits.jsonnet '' "$RESULTS/runner-1.log" || exit 1
wait_listening unix "$SOCKET" 60 || exit 1
cat /proc/sys/vm/overcommit_memory >"$RESULTS/overcommit"

# d: a bystander of another action's own-limit OOM, provably overlapping it.
exec_action d /bin/hog 20 0 /tmp/sync/d-ready /tmp/sync/d-barrier &
d_pid=$!
wait_for_file /tmp/sync/d-ready 60 || echo "hog 20 never got ready" >&2
# a+e: over its own limit.
exec_action a /bin/sh -c '/bin/hog 96; echo the shell survived; exit 3'
touch /tmp/sync/d-barrier
wait "$d_pid"

# f: a fork loop against pids.max 32.
exec_action f /bin/sh -c 'i=0; while [ $i -lt 64 ]; do sleep 3 & i=$((i + 1)); done; wait; exit 0'
# g: a busy loop against cpu.max 0.5.
exec_action g /bin/sh -c 'timeout 2 yes >/dev/null; exit 0'
find "$RUNNER_CGROUP/actions" -mindepth 1 -maxdepth 1 -type d >"$RESULTS/actions-1.left"
stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner-1.status"

# Runner 2, in a cgroup of its own limited to 128 MiB.
RUNNER_CGROUP=$CGROUP_ROOT/rbe-runner-2
start_runner /scenarios/action-cgroups.jsonnet 128M "$RESULTS/runner-2.log" || exit 1
wait_listening unix "$SOCKET" 60 || exit 1
cat "$RUNNER_CGROUP/memory.current" >"$RESULTS/runner-2.memory.current"

# b: the big action holds 100 MiB, then a small one allocates 40 MiB.
exec_action b-big /bin/hog 100 30 &
big_pid=$!
tries=600
while [ "$tries" -gt 0 ]; do
    current=0
    for action in "$RUNNER_CGROUP"/actions/*/; do
        [ -f "$action/memory.current" ] && current=$(cat "$action/memory.current")
    done
    [ "$current" -ge $((100 << 20)) ] && break
    sleep 0.1
    tries=$((tries - 1))
done
exec_action b-small /bin/hog 40 1
wait "$big_pid"
cat "$RUNNER_CGROUP/memory.events.local" >"$RESULTS/b.memory.events.local"

# b2: tmpfs pages fill the budget; the biggest process is a small bystander.
mkdir -p /tmp/shm && mount -t tmpfs -o size=200M tmpfs /tmp/shm || exit 1
exec_action b2-filler /bin/sh -c 'dd if=/dev/zero of=/tmp/shm/fill bs=1M count=80 2>/dev/null; touch /tmp/sync/filled; while [ ! -e /tmp/sync/release ]; do sleep 0.1; done; rm /tmp/shm/fill' &
filler_pid=$!
wait_for_file /tmp/sync/filled 60 || echo "the filler never filled" >&2
exec_action b2-victim /bin/hog 60 1
touch /tmp/sync/release
wait "$filler_pid"
cat "$RUNNER_CGROUP/memory.events.local" >"$RESULTS/b2.memory.events.local"
for diagnosis in /build/*/server_logs/rbe-runner-oom.txt; do
    [ -f "$diagnosis" ] && cat "$diagnosis" >>"$RESULTS/diagnoses.txt"
done
find "$RUNNER_CGROUP/actions" -mindepth 1 -maxdepth 1 -type d >"$RESULTS/actions-2.left"
stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner-2.status"
