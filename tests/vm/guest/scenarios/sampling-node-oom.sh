# sampleCgroupResourceUsage without any memory limit, in a VM too small for
# the action (run with --vm-memory 256M): the kernel's global OOM killer
# kills the action although its cgroup never reached a limit of its own.
# The Run must fail with UNAVAILABLE carrying both usages, and the diagnosis
# must be in the action's server logs directory. Records only; tests/vm.rs
# asserts.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

mkdir -p /build
start_runner /scenarios/sampling.jsonnet '' "$RESULTS/runner.log" || exit 1
wait_listening unix /run/runner.sock 60 || exit 1
cp "$RUNNER_CGROUP/memory.max" "$RESULTS/memory.max"
free -m >"$RESULTS/free.before"

uptime_seconds >"$RESULTS/exec.start"
rbe-runner exec --socket /run/runner.sock --build-dir /build --timeout 120s -- /bin/hog 1024 \
    >"$RESULTS/exec.json" 2>"$RESULTS/exec.stderr"
echo $? >"$RESULTS/exec.status"
uptime_seconds >"$RESULTS/exec.end"

cp "$RUNNER_CGROUP/memory.events" "$RESULTS/memory.events"
# The diagnosis the runner wrote into the action's server logs directory
# (exec made the only action directory).
ls -R /build >"$RESULTS/build.ls"
for diagnosis in /build/*/server_logs/rbe-runner-oom.txt; do
    [ -f "$diagnosis" ] && cp "$diagnosis" "$RESULTS/rbe-runner-oom.txt"
done
if kill -0 "$RUNNER_PID" 2>/dev/null; then
    echo yes >"$RESULTS/runner-alive-after-action"
else
    echo no >"$RESULTS/runner-alive-after-action"
fi
stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner.status"
