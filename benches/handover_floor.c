/*
 * What the kernel alone takes for an isolated action without a PID
 * namespace to be forked by the child that set up its namespaces, rather
 * than be that child (BENCHMARKS.md, issue 26, "the action of an isolated
 * child without pid is forked"): 400 times, a child in a new UTS
 * namespace sets its host name, then
 *   mode 0: execs /bin/true itself (the reference);
 *   mode 1: forks /bin/true as a sibling (CLONE_PARENT) and exits, as
 *           rbe-runner's child does;
 *   mode 2: the same with CLONE_VM | CLONE_VFORK (shares its memory until
 *           the exec, which would count the setup's pages in the action's
 *           maxrss: for comparison only);
 *   mode 3: no first process: the parent itself enters a new UTS
 *           namespace (unshare), sets the host name, forks /bin/true,
 *           which inherits the namespace, and goes back to its own
 *           (setns on a descriptor it kept). The action is then a fresh
 *           copy of its creator that ran no setup code, as with mode 1,
 *           at the price of no second process. A runner would do this on a
 *           thread of its own: unshare and setns act on the calling
 *           thread.
 * Modes 4 and 5 are modes 1 and 3 for `ipc` (a mount namespace, made
 * private, an IPC namespace and a tmpfs on /dev/shm) instead of
 * `hostname`.
 * The parent times from before the clone (or the unshare) until it has
 * waited for every child. Medians.
 *
 *   gcc -O2 -o /tmp/handover_floor benches/handover_floor.c
 *   sudo /tmp/handover_floor MODE
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SPAWNS 400

static char *true_argv[] = {"/bin/true", NULL};
static char *no_env[] = {NULL};

static double micros(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1e6 + now.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s 0|1|2|3|4|5\n", argv[0]);
        return 2;
    }
    int mode = atoi(argv[1]);
    static double took[SPAWNS];
    int own_uts = open("/proc/thread-self/ns/uts", O_RDONLY | O_CLOEXEC);
    int own_mnt = open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC);
    int own_ipc = open("/proc/thread-self/ns/ipc", O_RDONLY | O_CLOEXEC);
    for (int i = 0; i < SPAWNS; i++) {
        double start = micros();
        if (mode == 3 || mode == 5) {
            if (mode == 3) {
                if (unshare(CLONE_NEWUTS) != 0) {
                    perror("unshare (needs CAP_SYS_ADMIN)");
                    return 1;
                }
                sethostname("isolated", 8);
            } else {
                if (unshare(CLONE_NEWNS | CLONE_NEWIPC) != 0) {
                    perror("unshare (needs CAP_SYS_ADMIN)");
                    return 1;
                }
                mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
                mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777");
            }
            pid_t action = fork();
            if (action == 0) {
                execve("/bin/true", true_argv, no_env);
                _exit(127);
            }
            if (mode == 3) {
                setns(own_uts, CLONE_NEWUTS);
            } else {
                setns(own_mnt, CLONE_NEWNS);
                setns(own_ipc, CLONE_NEWIPC);
            }
            int status;
            waitpid(action, &status, 0);
            took[i] = micros() - start;
            continue;
        }
        unsigned long namespaces = mode == 4 ? CLONE_NEWNS | CLONE_NEWIPC : CLONE_NEWUTS;
        pid_t first = syscall(SYS_clone, namespaces | SIGCHLD, 0, 0, 0, 0);
        if (first < 0) {
            perror("clone (needs CAP_SYS_ADMIN)");
            return 1;
        }
        if (first == 0) {
            if (mode == 4) {
                mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
                mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777");
            } else {
                sethostname("isolated", 8);
            }
            if (mode == 0) {
                execve("/bin/true", true_argv, no_env);
                _exit(127);
            }
            unsigned long flags = CLONE_PARENT;
            if (mode == 2)
                flags |= CLONE_VM | CLONE_VFORK;
            pid_t action = syscall(SYS_clone, flags, 0, 0, 0, 0);
            if (action == 0) {
                execve("/bin/true", true_argv, no_env);
                _exit(127);
            }
            _exit(action < 0 ? 126 : 0);
        }
        int children = mode == 0 ? 1 : 2, status;
        for (int waited = 0; waited < children; waited++)
            waitpid(-1, &status, __WALL);
        took[i] = micros() - start;
    }
    qsort(took, SPAWNS, sizeof took[0], by_value);
    printf("mode %d: median %.0f µs, p25 %.0f µs\n", mode, took[SPAWNS / 2], took[SPAWNS / 4]);
    return 0;
}
