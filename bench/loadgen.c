/* Load generator for bench/run.py.
 *
 *   loadgen getppid SECONDS [CPU]
 *       Pins itself to CPU (default 0), writes "ready\n" and waits for one
 *       byte on stdin; then calls syscall(SYS_getppid) in a tight loop for
 *       SECONDS and writes "calls=N elapsed_ns=T\n" with ONE write(2). It
 *       then blocks reading stdin until it is closed, and exits.
 *
 *       Between the go byte and the close of stdin the process makes exactly
 *       N getppid calls and one write: the read that received the go byte
 *       was entered before any probe attached (so it is never counted), the
 *       clock is read through the vDSO, and the final read has not returned.
 *
 *   loadgen spawn DIR
 *       Executes every entry of DIR once (no arguments), one after another,
 *       and writes "spawned=N\n".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int run_getppid(double seconds, int cpu)
{
	cpu_set_t set;
	char byte, line[96];
	uint64_t calls = 0, start, end, deadline;
	int len;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) != 0) {
		perror("sched_setaffinity");
		return 1;
	}
	if (write(1, "ready\n", 6) != 6)
		return 1;
	if (read(0, &byte, 1) != 1)
		return 1;

	start = now_ns();
	deadline = start + (uint64_t)(seconds * 1e9);
	do {
		for (int i = 0; i < 1024; i++)
			syscall(SYS_getppid);
		calls += 1024;
		end = now_ns();
	} while (end < deadline);

	len = snprintf(line, sizeof(line), "calls=%llu elapsed_ns=%llu\n", (unsigned long long)calls,
		       (unsigned long long)(end - start));
	if (write(1, line, (size_t)len) != len)
		return 1;
	while (read(0, &byte, 1) > 0)
		;
	return 0;
}

static int run_spawn(const char *dir)
{
	char path[4096];
	struct dirent *d;
	long spawned = 0;
	DIR *dp = opendir(dir);

	if (!dp) {
		perror(dir);
		return 1;
	}
	while ((d = readdir(dp))) {
		char *argv[2];
		pid_t pid;
		int status;

		if (d->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, d->d_name);
		argv[0] = d->d_name;
		argv[1] = NULL;
		if (posix_spawn(&pid, path, NULL, NULL, argv, environ) != 0) {
			perror(path);
			continue;
		}
		if (waitpid(pid, &status, 0) == pid)
			spawned++;
	}
	closedir(dp);
	printf("spawned=%ld\n", spawned);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "getppid") == 0)
		return run_getppid(atof(argv[2]), argc >= 4 ? atoi(argv[3]) : 0);
	if (argc == 3 && strcmp(argv[1], "spawn") == 0)
		return run_spawn(argv[2]);
	fprintf(stderr, "usage: %s getppid SECONDS [CPU] | spawn DIR\n", argv[0]);
	return 2;
}
