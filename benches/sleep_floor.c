/*
 * What one sleep in epoll_wait costs the sleeper's CPU on this machine,
 * when another process wakes it (BENCHMARKS.md, issue 23, "where the
 * sequential Run's CPU goes"): a process writes one byte to a peer, sleeps
 * in epoll_wait on their socket until the peer writes it back, and reads
 * it, ROUNDS times. The peer pauses PAUSE microseconds (nanosleep) before
 * answering, so that the first process really goes to sleep and its core
 * idles, as the runner's does between an action's request, its exec and
 * its exit. Prints the first process's CPU time (getrusage: user and
 * system) per round: one write, one sleep and wake-up, one read.
 *
 * The epoll_wait has a timeout, as Tokio's has when a timer is pending.
 *
 *   gcc -O2 -o /tmp/sleep_floor benches/sleep_floor.c
 *   /tmp/sleep_floor [ROUNDS [PAUSE]]      (defaults 5000 and 300)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double cpu_micros(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6 +
           usage.ru_utime.tv_usec + usage.ru_stime.tv_usec;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 5000;
    long pause = argc > 2 ? atol(argv[2]) : 300;
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) {
        perror("socketpair");
        return 1;
    }
    pid_t peer = fork();
    if (peer < 0) {
        perror("fork");
        return 1;
    }
    if (peer == 0) {
        char byte;
        struct timespec wait = {pause / 1000000, (pause % 1000000) * 1000};
        close(pair[0]);
        while (read(pair[1], &byte, 1) == 1) {
            if (pause > 0)
                nanosleep(&wait, NULL);
            if (write(pair[1], &byte, 1) != 1)
                break;
        }
        _exit(0);
    }
    close(pair[1]);
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event event = {.events = EPOLLIN, .data.u64 = 0};
    if (epoll < 0 || epoll_ctl(epoll, EPOLL_CTL_ADD, pair[0], &event) != 0) {
        perror("epoll");
        return 1;
    }
    char byte = 'x';
    double before = cpu_micros();
    for (int round = 0; round < rounds; round++) {
        if (write(pair[0], &byte, 1) != 1 || epoll_wait(epoll, &event, 1, 30000) != 1 ||
            read(pair[0], &byte, 1) != 1) {
            perror("round");
            return 1;
        }
    }
    double spent = cpu_micros() - before;
    close(pair[0]);
    waitpid(peer, NULL, 0);
    printf("peer pauses %ld us: %.1f us of CPU per round (a write, a sleep in epoll_wait, a read)\n",
           pause, spent / rounds);
    return 0;
}
