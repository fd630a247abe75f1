/*
 * What the kernel alone takes to give a child the namespaces of an isolated
 * action (BENCHMARKS.md, issue 26): 400 times, the raw clone system call,
 * the child's setup as rbe-runner's child does it, and an exec of
 * /bin/true; the parent times from before the clone to the child's exec
 * (reported by the child on a pipe) and to its waitpid. Medians.
 *
 *   gcc -O2 -o /tmp/namespaces_floor benches/namespaces_floor.c
 *   sudo /tmp/namespaces_floor MODE
 *
 * MODE letters: U a mount namespace made by the child standing in /tmp
 * (chdir, unshare) and made private; n the same namespace made by the
 * clone; s a tmpfs on /dev/shm; i an IPC namespace; u a UTS namespace;
 * e exec /bin/true (otherwise the child exits at once); H the parent
 * holds the child's mount namespace open (/proc/PID/ns/mnt) until it has
 * waited for it, then times its close; p a PID namespace: the child mounts
 * its /proc with the masks rbe-runner applies, forks the action (which
 * does the rest) and waits for it as its init, and the parent times until
 * the init's report of the action's exit on a pipe, not the init's own
 * exit (as rbe-runner answers the Run); x nothing (the reference).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 400

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

static const char *read_only[] = {"/proc/sys", "/proc/irq", "/proc/bus", "/proc/sysrq-trigger"};
static const char *masked[] = {"/proc/kcore", "/proc/keys", "/proc/timer_list"};

/* The action's /proc, as rbe-runner's child mounts it. */
static int mount_proc(void) {
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) return -1;
    for (unsigned i = 0; i < sizeof read_only / sizeof *read_only; i++) {
        if (mount(read_only[i], read_only[i], NULL, MS_BIND | MS_REC, NULL) != 0) continue;
        mount(NULL, read_only[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    }
    for (unsigned i = 0; i < sizeof masked / sizeof *masked; i++)
        mount("/dev/null", masked[i], NULL, MS_BIND, NULL);
    return 0;
}

static long median(long *values) {
    qsort(values, ROUNDS, sizeof(long), by_value);
    return values[ROUNDS / 2];
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "x";
    int flags = 0;
    int unshares = strchr(mode, 'U') != NULL;
    int mounts = unshares || strchr(mode, 'n') != NULL;
    if (strchr(mode, 'n')) flags |= CLONE_NEWNS;
    if (strchr(mode, 'i')) flags |= CLONE_NEWIPC;
    if (strchr(mode, 'u')) flags |= CLONE_NEWUTS;
    int shm = strchr(mode, 's') != NULL;
    int execs = strchr(mode, 'e') != NULL;
    int holds = strchr(mode, 'H') != NULL;
    int pid_namespace = strchr(mode, 'p') != NULL;
    if (pid_namespace) {
        flags |= CLONE_NEWPID;
        if (!unshares) flags |= CLONE_NEWNS;
        mounts = 1;
    }
    static long to_exec[ROUNDS], to_wait[ROUNDS], closing[ROUNDS];
    for (int round = 0; round < ROUNDS; round++) {
        int ends[2];
        if (pipe(ends) != 0) return 1;
        long start = now_ns();
        pid_t pid = syscall(SYS_clone, SIGCHLD | flags, 0, 0, 0, 0);
        if (pid == 0) {
            if (unshares && (chdir("/tmp") != 0 || unshare(CLONE_NEWNS) != 0)) _exit(2);
            if (mounts && mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) _exit(3);
            if (shm && mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0)
                _exit(4);
            if (pid_namespace) {
                if (mount_proc() != 0) _exit(6);
                pid_t action = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
                if (action < 0) _exit(7);
                if (action > 0) {
                    /* The init: reports the action's exit, then exits. */
                    int status;
                    waitpid(action, &status, 0);
                    long at = now_ns();
                    if (write(ends[1], &at, sizeof at) != sizeof at) _exit(5);
                    _exit(0);
                }
            }
            long at = now_ns();
            if (!pid_namespace && write(ends[1], &at, sizeof at) != sizeof at) _exit(5);
            if (execs) {
                char *args[] = {"/bin/true", NULL};
                execv("/bin/true", args);
            }
            _exit(0);
        }
        if (pid < 0) return 1;
        int held = -1;
        if (holds) {
            char path[64];
            snprintf(path, sizeof path, "/proc/%d/ns/mnt", pid);
            held = open(path, O_RDONLY | O_CLOEXEC);
        }
        long exec_at;
        if (read(ends[0], &exec_at, sizeof exec_at) != sizeof exec_at) return 1;
        long waited = now_ns();
        int status;
        waitpid(pid, &status, 0);
        if (!pid_namespace) waited = now_ns();
        closing[round] = 0;
        if (held >= 0) {
            long before = now_ns();
            close(held);
            closing[round] = now_ns() - before;
        }
        to_exec[round] = exec_at - start;
        to_wait[round] = waited - start;
        close(ends[0]);
        close(ends[1]);
    }
    /* With p, "exec" is the init's report of the action's exit. */
    printf("%-6s clone to exec p50 %4ld us, to waitpid (p: the report) p50 %4ld us, close of the held namespace p50 %3ld us\n",
           mode, median(to_exec) / 1000, median(to_wait) / 1000, median(closing) / 1000);
    return 0;
}
