# rbe-runner serves from a cgroup whose memory.max is 64M; `rbe-runner exec`
# sends it an action that touches 200 MiB. The kernel must OOM-kill the
# action (not the runner), memory.events must count it, and exec must report
# the SIGKILL. This script only records; tests/vm.rs asserts.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

mkdir -p /build
start_runner /scenarios/runner-oom.jsonnet 64M "$SHARE/runner.log" || exit 1
wait_listening unix /run/runner.sock 60 || exit 1
cp "$RUNNER_CGROUP/memory.max" "$RESULTS/memory.max"

rbe-runner exec --socket /run/runner.sock --build-dir /build --timeout 120s -- /bin/hog 200 \
    >"$RESULTS/exec.json" 2>"$RESULTS/exec.stderr"
echo $? >"$RESULTS/exec.status"

cp "$RUNNER_CGROUP/memory.events" "$RESULTS/memory.events"
cp "$RUNNER_CGROUP/memory.peak" "$RESULTS/memory.peak"
# The action directories, for the action's own stdout and stderr.
cp -r /build "$RESULTS/build"

# Alive here means the OOM killer chose the action, not the runner.
if kill -0 "$RUNNER_PID" 2>/dev/null; then
    echo yes >"$RESULTS/runner-alive-after-action"
else
    echo no >"$RESULTS/runner-alive-after-action"
fi
stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner.status"
