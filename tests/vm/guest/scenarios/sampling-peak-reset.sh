# sampleCgroupResourceUsage, no memory limit: an action touching 200 MiB,
# then one touching 20 MiB. memory.peak keeps the cgroup's lifetime high
# watermark, so only a per-descriptor reset (Linux 6.12) lets the second
# action report its own, much lower, peak. Records only; tests/vm.rs
# asserts.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

mkdir -p /build
start_runner /scenarios/sampling.jsonnet '' "$RESULTS/runner.log" || exit 1
wait_listening unix /run/runner.sock 60 || exit 1

for mebibytes in 200 20; do
    uptime_seconds >"$RESULTS/hog-$mebibytes.start"
    rbe-runner exec --socket /run/runner.sock --build-dir /build --timeout 120s -- /bin/hog "$mebibytes" \
        >"$RESULTS/hog-$mebibytes.json" 2>"$RESULTS/hog-$mebibytes.stderr"
    echo $? >"$RESULTS/hog-$mebibytes.status"
    uptime_seconds >"$RESULTS/hog-$mebibytes.end"
done
# A fresh descriptor sees the lifetime peak, which covers both actions.
cp "$RUNNER_CGROUP/memory.peak" "$RESULTS/memory.peak.lifetime"

stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner.status"
