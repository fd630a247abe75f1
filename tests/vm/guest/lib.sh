# Helpers shared by the guest's /init and its scenarios (busybox sh).
# Installed as /lib/rbe-vm.sh in the initramfs.
# shellcheck disable=SC2034  # variables set here are used by the sourcing scripts

CGROUP_ROOT=/sys/fs/cgroup
# The runner runs here, alone, so that memory.events counts only it and its
# actions. A leaf: whatever the runner creates below it is its own business.
RUNNER_CGROUP=$CGROUP_ROOT/rbe-runner
# The host's per-run share: params in, results/ and runner.log out.
SHARE=/rbe-vm
RESULTS=$SHARE/results

# Lines the host looks for on the serial console.
marker() { echo "RBE-VM: $*" >/dev/console; }

uptime_seconds() { cut -d' ' -f1 /proc/uptime; }

# start_runner CONFIG MEMORY_MAX LOG: starts `rbe-runner CONFIG` inside
# RUNNER_CGROUP, whose memory.max becomes MEMORY_MAX (empty: no limit), with
# stdout and stderr appended to LOG. Sets RUNNER_PID.
start_runner() {
    mkdir -p "$RUNNER_CGROUP" || return 1
    if [ -n "$2" ]; then
        echo "$2" >"$RUNNER_CGROUP/memory.max" || { echo "cannot set memory.max to $2" >&2; return 1; }
    fi
    # The child moves itself into the cgroup before exec, so that not even
    # the runner's first allocation is charged elsewhere.
    # NO_COLOR: the log goes to a file, where ANSI escapes are noise.
    NO_COLOR=1 sh -c 'echo $$ >"$0/cgroup.procs" && exec rbe-runner "$1"' \
        "$RUNNER_CGROUP" "$1" </dev/null >>"$3" 2>&1 &
    RUNNER_PID=$!
}

# listening tcp PORT | listening unix PATH: whether a socket listens there.
listening() {
    case $1 in
    tcp)
        # Local address column "<hex addr>:<hex port>", state 0A = LISTEN.
        grep -qE "^ *[0-9]+: [0-9A-F]+:$(printf '%04X' "$2") [0-9A-F]+:0000 0A " /proc/net/tcp /proc/net/tcp6
        ;;
    unix)
        # The runner binds and listens under a temporary name and links the
        # socket to its path only then (/proc/net/unix keeps showing the
        # name it was bound at), so a socket at the path is one that
        # listens; the VM starts without stale ones.
        [ -S "$2" ]
        ;;
    esac
}

# wait_listening KIND WHERE SECONDS: waits until the runner listens, giving
# up early if it exits. Polls: /proc/net offers nothing to block on.
wait_listening() {
    tries=$(($3 * 10))
    while ! listening "$1" "$2"; do
        if ! kill -0 "$RUNNER_PID" 2>/dev/null; then
            echo "the runner exited before listening on $1 $2" >&2
            return 1
        fi
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            echo "the runner did not listen on $1 $2 within $3 s" >&2
            return 1
        fi
        sleep 0.1
    done
}

# stop_runner SECONDS: SIGTERM, then SIGKILL after SECONDS. Sets
# RUNNER_STATUS to the runner's exit status. (Not a $(...) function: a
# subshell cannot wait for its parent's child.)
stop_runner() {
    kill -TERM "$RUNNER_PID" 2>/dev/null
    tries=$(($1 * 10))
    while kill -0 "$RUNNER_PID" 2>/dev/null && [ "$tries" -gt 0 ]; do
        sleep 0.1
        tries=$((tries - 1))
    done
    if kill -0 "$RUNNER_PID" 2>/dev/null; then
        echo "the runner ignored SIGTERM for $1 s; killing it" >&2
        kill -KILL "$RUNNER_PID"
    fi
    wait "$RUNNER_PID"
    RUNNER_STATUS=$?
}

# The identity bb-deployments runs the runner as, for the non-root
# scenarios (issue 27).
NOBODY=65534

# as_nobody CMD ARGS...: runs CMD as nobody (uid and gid 65534, no
# supplementary group, no capability). Through busybox su, whose setpriv
# cannot change the uid; su needs the user in /etc/passwd.
as_nobody() {
    grep -q "^nobody:" /etc/passwd 2>/dev/null ||
        echo "nobody:x:$NOBODY:$NOBODY:nobody:/:/bin/sh" >>/etc/passwd
    grep -q "^nogroup:" /etc/group 2>/dev/null || echo "nogroup:x:$NOBODY:" >>/etc/group
    # Options first and `--`: su's option parser would take CMD's own.
    su -p -s /bin/sh -c 'exec "$0" "$@"' -- nobody "$@"
}

# start_runner_as_nobody CONFIG LOG: start_runner's runner as nobody,
# RUNNER_CGROUP delegated to it as systemd's Delegate=yes does (the
# directory and the files that move processes and enable controllers
# chowned). Sets RUNNER_PID.
start_runner_as_nobody() {
    mkdir -p "$RUNNER_CGROUP" /etc || return 1
    for delegated in "" /cgroup.procs /cgroup.subtree_control /cgroup.threads; do
        chown "$NOBODY:$NOBODY" "$RUNNER_CGROUP$delegated" || return 1
    done
    as_nobody true || return 1
    NO_COLOR=1 sh -c 'echo $$ >"$0/cgroup.procs" && exec su -p -s /bin/sh -c "exec rbe-runner \"\$0\"" -- nobody "$1"' \
        "$RUNNER_CGROUP" "$1" </dev/null >>"$2" 2>&1 &
    RUNNER_PID=$!
}

# exec_action NAME ARGS...: runs one action (ARGS) through the runner at
# $SOCKET with /build as its build directory, recording NAME.json,
# NAME.stderr and NAME.status in $RESULTS. With EXEC_AS set (as_nobody),
# the client runs through that command.
exec_action() {
    name=$1
    shift
    # shellcheck disable=SC2086 # EXEC_AS is one word or none (set -u: unset is none).
    ${EXEC_AS:-} rbe-runner exec --socket "$SOCKET" --build-dir /build --timeout 120s -- "$@" \
        >"$RESULTS/$name.json" 2>"$RESULTS/$name.stderr"
    echo $? >"$RESULTS/$name.status"
}

# isolated_view_oom_after [VIEW_PREFIX]: the isolation scenarios' three
# actions, through the runner already serving at $SOCKET, recorded for
# tests/vm.rs: `view`, the action's own view (VIEW_PREFIX, shell commands,
# runs first; then processes, interfaces, /tmp, host name, cgroup);
# `oom`, a hog reaching the action's limit inside its PID namespace; and
# `after`, an action once the OOM is over. Then what is left (action
# cgroups, inits, the host's /tmp file), and the runner's exit status.
isolated_view_oom_after() {
    exec_action view /bin/sh -c "${1:-}"'echo processes:; ls /proc | grep -c "^[0-9]"; echo interfaces:; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "; echo tmp:; ls -A /tmp; echo hostname:; hostname; echo cgroup:; cat /proc/self/cgroup'
    cp /build/*/stdout "$RESULTS/view.stdout" 2>/dev/null

    exec_action oom /bin/sh -c '/bin/hog 96; echo the shell survived; exit 3'
    for diagnosis in /build/*/server_logs/rbe-runner-oom.txt; do
        [ -f "$diagnosis" ] && cat "$diagnosis" >>"$RESULTS/oom-diagnosis.txt"
    done

    exec_action after /bin/sh -c 'hostname; exit 4'
    find "$RUNNER_CGROUP/actions" -mindepth 1 -maxdepth 1 -type d >"$RESULTS/actions.left"
    # Processes besides the runner and this script's: busybox ps lists
    # them all.
    ps -o pid,args >"$RESULTS/ps.after"
    grep -c "__action-init" "$RESULTS/ps.after" >"$RESULTS/inits.left"
    cat /tmp/host-file >"$RESULTS/host-file"
    stop_runner 20
    echo "$RUNNER_STATUS" >"$RESULTS/runner.status"
}
