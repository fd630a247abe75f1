# Isolation from a runner without root (issue 27) on the real 6.12
# kernel: the runner runs as nobody, without capabilities, and makes
# actions' namespaces inside user namespaces (userns-nonroot.jsonnet:
# every isolation option, actionCgroups with memoryMax 64M in a subtree
# delegated to nobody). Records only; tests/vm.rs asserts.
#
#   refused: with user.max_user_namespaces 0 the runner refuses to start,
#            saying why and how to fix it;
#   view:    with the sysctl back, an isolated action's own view (its
#            identity, processes, interfaces, /tmp, host name, cgroup);
#   oom:     `sh -c 'hog 96; exit 3'` inside the PID namespace reaches its
#            own limit: the Run keeps its verdict (OWN_LIMIT) and evidence;
#   after:   an action after the OOM still runs isolated, nothing is left.
set -u
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. /lib/rbe-vm.sh

SOCKET=/run/rbe/runner.sock
CONFIG=/scenarios/userns-nonroot.jsonnet
# Actions are sent as nobody too (exec_action in lib.sh): bb_worker's
# user, which owns the build directory.
EXEC_AS=as_nobody

mkdir -p /build /run/rbe /tmp /var/tmp /dev/shm
chown "$NOBODY:$NOBODY" /build /run/rbe
echo host-file >/tmp/host-file
uname -r >"$RESULTS/uname"

# Refused: no user namespaces allowed.
max=$(cat /proc/sys/user/max_user_namespaces)
echo 0 >/proc/sys/user/max_user_namespaces || exit 1
# In a cgroup of its own: the runner takes over the one it starts in, which
# then holds no process (its controllers enabled below it).
SERVING_CGROUP=$RUNNER_CGROUP
RUNNER_CGROUP=$CGROUP_ROOT/rbe-runner-refused
start_runner_as_nobody "$CONFIG" "$RESULTS/refused.log" || exit 1
served=no
wait_listening unix "$SOCKET" 60 && served=yes
echo "$served" >"$RESULTS/refused.served"
stop_runner 20
echo "$RUNNER_STATUS" >"$RESULTS/refused.status"
echo "$max" >/proc/sys/user/max_user_namespaces || exit 1
RUNNER_CGROUP=$SERVING_CGROUP

# Allowed: the same runner serves isolated actions.
start_runner_as_nobody "$CONFIG" "$RESULTS/runner.log" || exit 1
wait_listening unix "$SOCKET" 60 || exit 1
ps -o user,args | grep "[r]be-runner $CONFIG" >"$RESULTS/runner.ps"

isolated_view_oom_after 'echo identity:; id -u; id -g; '
