# sampleCgroupResourceUsage with cpu.max at 10% of one CPU on the runner's
# cgroup, and an action that spins for two seconds: it is runnable but
# throttled most of that time, which PSI counts as CPU pressure. Records
# only; tests/vm.rs asserts.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

mkdir -p /build "$RUNNER_CGROUP"
echo "10000 100000" >"$RUNNER_CGROUP/cpu.max" || exit 1
cp "$RUNNER_CGROUP/cpu.max" "$RESULTS/cpu.max"
start_runner /scenarios/sampling.jsonnet '' "$RESULTS/runner.log" || exit 1
wait_listening unix /run/runner.sock 60 || exit 1

uptime_seconds >"$RESULTS/exec.start"
rbe-runner exec --socket /run/runner.sock --build-dir /build --timeout 120s -- \
    /bin/sh -c 'timeout 2 yes >/dev/null; exit 0' \
    >"$RESULTS/exec.json" 2>"$RESULTS/exec.stderr"
echo $? >"$RESULTS/exec.status"
uptime_seconds >"$RESULTS/exec.end"

cp "$RUNNER_CGROUP/cpu.stat" "$RESULTS/cpu.stat"
stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner.status"
