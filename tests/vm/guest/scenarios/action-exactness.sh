# Issue 15's scenarios h and c, in one boot (run with --vm-memory 768M).
#
# h: 8 actions started together, hog 6, 12, ..., 48 MiB, each holding its
#    memory until a barrier appears after all 8 have allocated, so that they
#    provably overlap. At the barrier each action cgroup's memory.current,
#    memory.peak and memory.stat are recorded, to show where any excess
#    over what was held comes from.
# c: then one action allocates more than the VM has, with no limit
#    anywhere: a node OOM, NOT_OWN_LIMIT, UNAVAILABLE with the evidence.
# Records only; tests/vm.rs asserts.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

SOCKET=/run/runner.sock
mkdir -p /build /tmp/sync
THP=/sys/kernel/mm/transparent_hugepage
cat "$THP/enabled" >"$RESULTS/thp.enabled" 2>/dev/null
# khugepaged collapsing an action's small pages into a huge page allocates
# the new 2 MiB page before freeing the old ones: a real, transient 2 MiB
# charged to the action, which its memory.peak rightly shows. Measured with
# THP "always": the actions where khugepaged collapsed pages peaked 2.2 to
# 2.5 MiB above what they held, the others 0.25 to 0.9 MiB; the runner's
# first action alone (hog 1) 0.27 MiB, so the forked child costs nothing
# measurable. khugepaged wakes for every new process, so a long sleep does
# not stop it; "madvise" keeps it (and huge pages) away from the hogs and
# isolates what the runner controls.
echo madvise >"$THP/enabled" || exit 1
cat "$THP/khugepaged/pages_collapsed" >"$RESULTS/h-collapsed.before"
start_runner /scenarios/action-cgroups.jsonnet '' "$RESULTS/runner.log" || exit 1
wait_listening unix "$SOCKET" 60 || exit 1

# The runner's first action, alone: what a first spawn costs.
rbe-runner exec --socket "$SOCKET" --build-dir /build --timeout 120s -- /bin/hog 1 \
    >"$RESULTS/h-first.json" 2>"$RESULTS/h-first.stderr"

pids=''
for mebibytes in 6 12 18 24 30 36 42 48; do
    rbe-runner exec --socket "$SOCKET" --build-dir /build --timeout 120s -- \
        /bin/hog "$mebibytes" 1 "/tmp/sync/ready-$mebibytes" /tmp/sync/barrier \
        >"$RESULTS/h-$mebibytes.json" 2>"$RESULTS/h-$mebibytes.stderr" &
    pids="$pids $!"
done
tries=1200
while [ "$(find /tmp/sync -name 'ready-*' | wc -l)" -lt 8 ] && [ "$tries" -gt 0 ]; do
    sleep 0.1
    tries=$((tries - 1))
done
# Every action has allocated and is waiting: record each cgroup as it is.
for action in "$RUNNER_CGROUP"/actions/*/; do
    name=$(basename "$action")
    {
        echo "cgroup $name"
        echo "procs $(tr '\n' ' ' <"$action/cgroup.procs")"
        for pid in $(cat "$action/cgroup.procs"); do
            echo "cmdline $(tr '\0' ' ' <"/proc/$pid/cmdline")"
        done
        echo "memory.current $(cat "$action/memory.current")"
        echo "memory.peak $(cat "$action/memory.peak")"
        cat "$action/memory.stat"
    } >"$RESULTS/h-cgroup-$name.txt"
done
ls /tmp/sync >"$RESULTS/h-ready"
cat "$THP/khugepaged/pages_collapsed" >"$RESULTS/h-collapsed.at-barrier"
touch /tmp/sync/barrier
for pid in $pids; do
    wait "$pid"
done

# c: a node OOM.
uptime_seconds >"$RESULTS/c.start"
rbe-runner exec --socket "$SOCKET" --build-dir /build --timeout 120s -- /bin/hog 2048 \
    >"$RESULTS/c.json" 2>"$RESULTS/c.stderr"
echo $? >"$RESULTS/c.status"
uptime_seconds >"$RESULTS/c.end"
for diagnosis in /build/*/server_logs/rbe-runner-oom.txt; do
    [ -f "$diagnosis" ] && cp "$diagnosis" "$RESULTS/c-rbe-runner-oom.txt"
done
if kill -0 "$RUNNER_PID" 2>/dev/null; then
    echo yes >"$RESULTS/runner-alive-after-action"
else
    echo no >"$RESULTS/runner-alive-after-action"
fi
stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner.status"
