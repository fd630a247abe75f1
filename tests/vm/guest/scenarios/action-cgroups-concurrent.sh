# actionCgroups + sampleCgroupResourceUsage: two actions at the same time,
# one touching 120 MiB and one 12 MiB, each holding it for 2 s so that they
# overlap. With per-action cgroups each reports its own peak; a shared
# cgroup would charge both for 132 MiB. Records only; tests/vm.rs asserts.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

mkdir -p /build
start_runner /scenarios/action-cgroups.jsonnet '' "$RESULTS/runner.log" || exit 1
wait_listening unix /run/runner.sock 60 || exit 1
grep '^0::' "/proc/$RUNNER_PID/cgroup" >"$RESULTS/runner.cgroup"
cat "$RUNNER_CGROUP/cgroup.subtree_control" >"$RESULTS/subtree_control"

for mebibytes in 120 12; do
    rbe-runner exec --socket /run/runner.sock --build-dir /build --timeout 120s -- /bin/hog "$mebibytes" 2 \
        >"$RESULTS/hog-$mebibytes.json" 2>"$RESULTS/hog-$mebibytes.stderr" &
    eval "pid_$mebibytes=\$!"
done
# shellcheck disable=SC2154  # set by the eval above
wait "$pid_120"; echo $? >"$RESULTS/hog-120.status"
# shellcheck disable=SC2154
wait "$pid_12"; echo $? >"$RESULTS/hog-12.status"
find "$RUNNER_CGROUP/actions" -mindepth 1 -maxdepth 1 -type d >"$RESULTS/actions.left"

stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner.status"
