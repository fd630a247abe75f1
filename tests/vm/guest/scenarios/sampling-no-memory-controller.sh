# sampleCgroupResourceUsage with the runner in a cgroup whose parent does
# not enable the memory controller for its children, so memory.events is
# missing: the runner must refuse to start, naming the file and the fix.
# Records only; tests/vm.rs asserts.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

# The root enables memory for no-memory; no-memory enables nothing for its
# children.
RUNNER_CGROUP=$CGROUP_ROOT/no-memory/rbe-runner
mkdir -p /build "$RUNNER_CGROUP" || exit 1
cp "$CGROUP_ROOT/no-memory/cgroup.subtree_control" "$RESULTS/parent.subtree_control"
ls "$RUNNER_CGROUP" >"$RESULTS/runner-cgroup.files"

start_runner /scenarios/sampling.jsonnet '' "$RESULTS/runner.log" || exit 1
# A runner that wrongly starts serving is killed after 30 s, which shows as
# status 137.
(sleep 30 && kill -KILL "$RUNNER_PID" 2>/dev/null) &
watchdog=$!
wait "$RUNNER_PID"
echo $? >"$RESULTS/runner.status"
kill "$watchdog" 2>/dev/null
