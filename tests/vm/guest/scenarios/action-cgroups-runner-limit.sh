# actionCgroups + sampleCgroupResourceUsage with memory.max 64M on the
# runner's cgroup: an action touching 200 MiB is killed by that limit. The
# kill is counted as oom_kill in the action's own cgroup but as oom only in
# the runner's, so the runner must see it as its own limit (the build fails
# with the evidence) and not as node pressure (a retry). Records only;
# tests/vm.rs asserts.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

mkdir -p /build
start_runner /scenarios/action-cgroups.jsonnet 64M "$RESULTS/runner.log" || exit 1
wait_listening unix /run/runner.sock 60 || exit 1

rbe-runner exec --socket /run/runner.sock --build-dir /build --timeout 120s -- /bin/hog 200 \
    >"$RESULTS/exec.json" 2>"$RESULTS/exec.stderr"
echo $? >"$RESULTS/exec.status"
cat "$RUNNER_CGROUP/memory.events" >"$RESULTS/memory.events"

stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner.status"
