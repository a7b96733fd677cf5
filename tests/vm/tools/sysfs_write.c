// SPDX-License-Identifier: GPL-2.0
/*
 * sysfs_write VALUE FILE: one write(2) of "VALUE\n" to FILE, like the shell's
 * `echo VALUE > FILE`, reporting the errno the kernel returned instead of a
 * libc message:
 *   pid=<own pid> write=ok
 *   pid=<own pid> write=fail errno=<n>
 * The lifecycle suite has <n> named by the kernel's own %pe (tsm_linktsm's
 * `errname` command), so no table of errno names or messages is involved.
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
	size_t n;
	char *buf;
	int fd, err = 0;

	if (argc != 3) {
		fprintf(stderr, "usage: sysfs_write VALUE FILE\n");
		return 2;
	}
	n = strlen(argv[1]);
	buf = malloc(n + 1);
	if (!buf)
		return 2;
	memcpy(buf, argv[1], n);
	buf[n] = '\n';
	fd = open(argv[2], O_WRONLY);
	if (fd < 0)
		err = errno;
	else if (write(fd, buf, n + 1) < 0)
		err = errno;
	printf("pid=%d write=%s", (int)getpid(), err ? "fail" : "ok");
	if (err)
		printf(" errno=%d", err);
	printf("\n");
	return err ? 1 : 0;
}
