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

exec_action view /bin/sh -c 'echo processes:; ls /proc | grep -c "^[0-9]"; echo interfaces:; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "; echo tmp:; ls -A /tmp; echo hostname:; hostname; echo cgroup:; cat /proc/self/cgroup'
cp /build/*/stdout "$RESULTS/view.stdout" 2>/dev/null

exec_action oom /bin/sh -c '/bin/hog 96; echo the shell survived; exit 3'
for diagnosis in /build/*/server_logs/rbe-runner-oom.txt; do
    [ -f "$diagnosis" ] && cat "$diagnosis" >>"$RESULTS/oom-diagnosis.txt"
done

exec_action after /bin/sh -c 'hostname; exit 4'
find "$RUNNER_CGROUP/actions" -mindepth 1 -maxdepth 1 -type d >"$RESULTS/actions.left"
# Processes besides the runner and this script's: busybox ps lists them all.
ps -o pid,args >"$RESULTS/ps.after"
grep -c "__action-init" "$RESULTS/ps.after" >"$RESULTS/inits.left"
cat /tmp/host-file >"$RESULTS/host-file"
stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/runner.status"
