// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_standin: the ctl command parser (one command per write() to
 * /sys/kernel/debug/tsm_standin/ctl; the commands are listed in standin_main.c).
 */
#include "standin.h"

static int parse_u32(const char *s, u32 *v)
{
	return s ? kstrtou32(s, 0, v) : -EINVAL;
}

int standin_run_cmd(char **argv, int argc, const char __user *ubuf)
{
	const char *c = argv[0];
	u32 a, b, d;
	u64 v;
	int rc;

	if (!strcmp(c, "vm_create") && argc == 2) {
		rc = parse_u32(argv[1], &a);
		return rc ?: standin_cmd_vm_create(a);
	}
	if (!strcmp(c, "vm_destroy") && argc == 2) {
		rc = parse_u32(argv[1], &a);
		return rc ?: standin_cmd_vm_destroy(a);
	}
	if (!strcmp(c, "vdev_create") && argc == 5) {
		rc = parse_u32(argv[1], &a) ?: kstrtou64(argv[4], 0, &v);
		return rc ?: standin_cmd_vdev_create(a, argv[2], argv[3], v);
	}
	if (!strcmp(c, "respond_delay_us") && argc == 2) {
		rc = parse_u32(argv[1], &a);
		if (rc)
			return rc;
		standin_respond_delay_us = a;
		rec("respond_delay_us=%u", a);
		return 0;
	}
	if (!strcmp(c, "storm") && (argc == 3 || argc == 4)) {
		d = 0;
		rc = parse_u32(argv[1], &a) ?: parse_u32(argv[2], &b);
		if (!rc && argc == 4)
			rc = parse_u32(argv[3], &d);
		return rc ?: standin_cmd_storm(a, b, d, ubuf);
	}
	if (!strcmp(c, "parallel") && argc == 3) {
		rc = parse_u32(argv[1], &a) ?: parse_u32(argv[2], &b);
		return rc ?: standin_cmd_parallel(a, b);
	}
	if (!strcmp(c, "ioctl") && argc == 4) {
		rc = parse_u32(argv[1], &a) ?: parse_u32(argv[2], &b) ?:
		     parse_u32(argv[3], &d);
		return rc ?: standin_cmd_ioctl(a, b, d, ubuf);
	}
	if (!strcmp(c, "vdev_destroy") && (argc == 2 || argc == 3)) {
		if (argc == 3 && strcmp(argv[2], "nounbind"))
			return -EINVAL;
		rc = parse_u32(argv[1], &a);
		return rc ?: standin_cmd_vdev_destroy(a, argc == 2);
	}
	if (!strcmp(c, "tsm_bind") && argc == 4) {
		rc = kstrtou64(argv[3], 0, &v);
		return rc ?: standin_cmd_tsm_bind(argv[1], argv[2], v);
	}
	if (!strcmp(c, "tsm_unbind") && argc == 2)
		return standin_cmd_tsm_unbind(argv[1]);
	if (!strcmp(c, "disconnect") && argc == 2)
		return standin_cmd_disconnect(argv[1]);
	if (!strcmp(c, "inject") && argc >= 2) {
		if (!strcmp(argv[1], "driver") && (argc == 3 || argc == 4)) {
			int e;

			rc = kstrtoint(argv[2], 0, &e);
			b = 1;
			if (!rc && argc == 4)
				rc = parse_u32(argv[3], &b);
			if (rc)
				return rc;
			e = abs(e);
			if (e == 0 || e >= MAX_ERRNO)
				return -EINVAL;
			standin_inject_driver_errno = e;
			standin_inject_driver_count = b;
			rec("errno=%d count=%u", -e, b);
			return 0;
		}
		if (!strcmp(argv[1], "respond_efault") &&
		    (argc == 2 || argc == 3)) {
			b = 1;
			rc = argc == 3 ? parse_u32(argv[2], &b) : 0;
			if (rc)
				return rc;
			standin_inject_respond_count = b;
			rec("count=%u", b);
			return 0;
		}
		if (!strcmp(argv[1], "clear") && argc == 2) {
			standin_inject_driver_count = 0;
			standin_inject_respond_count = 0;
			return 0;
		}
		return -EINVAL;
	}
	if (!strcmp(c, "delay_us") && argc == 2) {
		rc = parse_u32(argv[1], &a);
		if (rc)
			return rc;
		standin_bind_delay_us = a;
		rec("delay_us=%u", a);
		return 0;
	}
	if (!strcmp(c, "guest_req") && argc == 5) {
		rc = parse_u32(argv[2], &a) ?: parse_u32(argv[3], &b) ?:
		     parse_u32(argv[4], &d);
		return rc ?: standin_cmd_guest_req(argv[1], a, b, d);
	}
	if (!strcmp(c, "tsm_req") && argc == 5) {
		rc = parse_u32(argv[1], &a) ?: parse_u32(argv[2], &b) ?:
		     parse_u32(argv[3], &d) ?: kstrtou64(argv[4], 0, &v);
		return rc ?: standin_cmd_tsm_req(a, b, d, v);
	}
	if (!strcmp(c, "realpci") && argc == 2) {
		rc = parse_u32(argv[1], &a);
		if (rc || a > 1)
			return -EINVAL;
		if (a && !STANDIN_HAVE_REAL_PCI_TSM)
			return -EOPNOTSUPP;
		standin_realpci = a;
		rec("realpci=%u", a);
		return 0;
	}
	return -EINVAL;
}
