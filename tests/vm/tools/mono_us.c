// SPDX-License-Identifier: GPL-2.0
/*
 * mono_us: prints CLOCK_MONOTONIC in microseconds (busybox's /proc/uptime gives 10 ms):
 * the crash suite times its steps with it and places its kills inside them.
 * mono_us SLEEP_US: sleeps that long first, then prints.
 * Built static for the test VMs by xtask (vm/tools.rs).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
	struct timespec ts;

	if (argc == 2) {
		long us = strtol(argv[1], NULL, 10);

		ts.tv_sec = us / 1000000;
		ts.tv_nsec = (us % 1000000) * 1000;
		nanosleep(&ts, NULL);
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	printf("%lld\n", (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
	return 0;
}
