# The harness's own check, without the runner: a process over its cgroup's
# memory.max is OOM-killed, and memory.events says so. If this fails, the
# kernel or the harness is at fault, not rbe-runner.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

cgroup=$CGROUP_ROOT/hog
mkdir "$cgroup"
echo 64M >"$cgroup/memory.max"
cp "$cgroup/memory.max" "$RESULTS/memory.max"

sh -c 'echo $$ >"$0/cgroup.procs" && exec hog 200' "$cgroup" >"$RESULTS/hog.out" 2>&1
echo $? >"$RESULTS/hog.status"

cp "$cgroup/memory.events" "$RESULTS/memory.events"
cp "$cgroup/memory.peak" "$RESULTS/memory.peak"
