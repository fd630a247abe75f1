# Isolation (issue 26) on the real 6.12 kernel, with per-action cgroups and
# a memory limit (isolation-oom.jsonnet: every isolation option, memoryMax
# 64M). Records only; tests/vm.rs asserts.
#
#   view: an isolated action's own view (processes, interfaces, /tmp, host
#         name, its cgroup), so the namespaces are proven on this kernel too;
#   oom:  `sh -c 'hog 96; exit 3'` inside the PID namespace reaches its own
#         limit; memory.oom.group kills the whole cgroup, the namespace's
#         init included, and the Run must keep its verdict (OWN_LIMIT) and
#         its evidence (the counters, the diagnosis in server_logs);
#   after: an action after the OOM still runs isolated, and no action
#         cgroup or process is left.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

SOCKET=/run/runner.sock

# What a container has and a private /tmp mounts over.
mkdir -p /build /tmp /var/tmp /dev/shm
echo host-file >/tmp/host-file
start_runner /scenarios/isolation-oom.jsonnet '' "$RESULTS/runner.log" || exit 1
wait_listening unix "$SOCKET" 60 || exit 1
uname -r >"$RESULTS/uname"

isolated_view_oom_after
