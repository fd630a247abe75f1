/*
 * hog MIB [HOLD_SECONDS [READY_FILE BARRIER_FILE]]: allocates MIB mebibytes
 * one at a time and touches every page, so that the memory is really charged
 * to the cgroup (untouched malloc'd memory costs nothing). Static, for the
 * guest's libc-less initramfs.
 *
 * With READY_FILE and BARRIER_FILE, it creates READY_FILE once everything is
 * touched and waits for BARRIER_FILE to exist before holding HOLD_SECONDS,
 * so that a scenario can make several hogs provably overlap.
 *
 * Prints its progress every 16 MiB, unbuffered, so that a test can see how
 * far it got before the OOM killer stopped it. Exits 0 if it touched all of
 * it (after holding it for HOLD_SECONDS), 2 if malloc failed, 64 on bad usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024L * 1024L)

int main(int argc, char **argv) {
	if (argc != 2 && argc != 3 && argc != 5) {
		fprintf(stderr, "usage: hog MIB [HOLD_SECONDS [READY_FILE BARRIER_FILE]]\n");
		return 64;
	}
	char *end;
	long mebibytes = strtol(argv[1], &end, 10);
	if (*end != '\0' || mebibytes < 0) {
		fprintf(stderr, "hog: bad MIB %s\n", argv[1]);
		return 64;
	}
	long hold_seconds = argc >= 3 ? strtol(argv[2], &end, 10) : 0;
	if (argc >= 3 && (*end != '\0' || hold_seconds < 0)) {
		fprintf(stderr, "hog: bad HOLD_SECONDS %s\n", argv[2]);
		return 64;
	}

	setvbuf(stdout, NULL, _IONBF, 0);
	for (long i = 1; i <= mebibytes; i++) {
		char *chunk = malloc(MIB);
		if (chunk == NULL) {
			printf("hog: malloc failed after %ld MiB\n", i - 1);
			return 2;
		}
		memset(chunk, 0xA5, MIB);
		if (i % 16 == 0)
			printf("hog: touched %ld MiB\n", i);
	}
	printf("hog: touched all %ld MiB\n", mebibytes);
	if (argc == 5) {
		FILE *ready = fopen(argv[3], "w");
		if (ready == NULL) {
			perror(argv[3]);
			return 3;
		}
		fclose(ready);
		while (access(argv[4], F_OK) != 0)
			usleep(50000);
	}
	if (hold_seconds > 0)
		sleep((unsigned)hold_seconds);
	return 0;
}
