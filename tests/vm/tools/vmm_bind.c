// SPDX-License-Identifier: GPL-2.0
/*
 * vmm_bind: writes a command into a file from a process that runs with a VMM's argv: a
 * stand-in VMM. A bind runs in the context of the process that asks for it, and tsm-trace
 * names the VM from that process's argv (mm->arg_start..arg_end), so the lifecycle suite
 * binds through this with the argv of QEMU, libvirt's QEMU, Kata, cloud-hypervisor,
 * Firecracker, crosvm.
 *
 * vmm_bind FILE COMMAND ARGV0 [ARG...]
 *   re-executes itself (/proc/self/exe) with exactly ARGV0 ARG... as its argv and FILE and
 *   COMMAND in its environment; that process writes COMMAND to FILE in one write(2) and
 *   prints "pid=<its pid> write=ok", or "pid=<pid> write=fail errno=<n>".
 * Built static for the test VMs by xtask (vm/tools.rs).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char *file = getenv("VMM_BIND_FILE");
	const char *cmd = getenv("VMM_BIND_CMD");
	ssize_t n;
	int fd;

	if (!file || !cmd) {
		if (argc < 4) {
			fprintf(stderr, "usage: vmm_bind FILE COMMAND ARGV0 [ARG...]\n");
			return 2;
		}
		if (setenv("VMM_BIND_FILE", argv[1], 1) || setenv("VMM_BIND_CMD", argv[2], 1)) {
			perror("setenv");
			return 2;
		}
		execv("/proc/self/exe", argv + 3);
		perror("execv /proc/self/exe");
		return 2;
	}
	fd = open(file, O_WRONLY);
	if (fd < 0) {
		printf("pid=%d write=fail errno=%d\n", getpid(), errno);
		return 1;
	}
	n = write(fd, cmd, strlen(cmd));
	if (n < 0) {
		printf("pid=%d write=fail errno=%d\n", getpid(), errno);
		close(fd);
		return 1;
	}
	close(fd);
	printf("pid=%d write=ok\n", getpid());
	return 0;
}
