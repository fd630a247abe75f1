# actionCgroups + sampleCgroupResourceUsage + diagnosticsHttpServer, with
# memory.max 256M on the runner's cgroup: two actions (one touching 48 MiB,
# one exiting at once), then /metrics and /-/ready fetched with busybox
# wget from inside the guest. Records only; tests/vm.rs asserts.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

mkdir -p /build
start_runner /scenarios/diagnostics-metrics.jsonnet 256M "$RESULTS/runner.log" || exit 1
# The diagnostics server binds after the gRPC socket, so this also waits
# for the socket. (wait_listening unix looks for the path in
# /proc/net/unix, which shows the temporary name the socket was bound at
# before it was linked to /run/runner.sock.)
wait_listening tcp 9980 60 || exit 1

rbe-runner exec --socket /run/runner.sock --build-dir /build --timeout 120s -- /bin/hog 48 \
    >"$RESULTS/hog.json" 2>"$RESULTS/hog.stderr"
echo $? >"$RESULTS/hog.status"
rbe-runner exec --socket /run/runner.sock --build-dir /build --timeout 120s -- /bin/sh -c 'exit 0' \
    >"$RESULTS/true.json" 2>"$RESULTS/true.stderr"
echo $? >"$RESULTS/true.status"

wget -q -O "$RESULTS/metrics.txt" http://127.0.0.1:9980/metrics
echo $? >"$RESULTS/metrics.status"
wget -q -O "$RESULTS/ready.txt" http://127.0.0.1:9980/-/ready
echo $? >"$RESULTS/ready.status"

stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner.status"
