# sampleCgroupResourceUsage with memory.max 64M on the runner's cgroup, and
# an action that touches 200 MiB: the action reaches its own limit, so the
# Run must succeed (exit -1, SIGKILL) with a CgroupResourceUsage counting the
# OOM and a peak near the limit. Records only; tests/vm.rs asserts.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

mkdir -p /build
start_runner /scenarios/sampling.jsonnet 64M "$RESULTS/runner.log" || exit 1
wait_listening unix /run/runner.sock 60 || exit 1
cp "$RUNNER_CGROUP/memory.max" "$RESULTS/memory.max"

uptime_seconds >"$RESULTS/exec.start"
rbe-runner exec --socket /run/runner.sock --build-dir /build --timeout 120s -- /bin/hog 200 \
    >"$RESULTS/exec.json" 2>"$RESULTS/exec.stderr"
echo $? >"$RESULTS/exec.status"
uptime_seconds >"$RESULTS/exec.end"

cp "$RUNNER_CGROUP/memory.events" "$RESULTS/memory.events"
stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner.status"
