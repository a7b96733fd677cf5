// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_linktsm: the ctl commands (register, tee, inject, delay, bind, unbind,
 * guest_req, ...; listed in linktsm_main.c) and their parser.
 */
#include "linktsm.h"

/* ---- Commands ---- */

int lt_do_register(void)
{
	struct tsm_dev *t;

	if (lt_tsm)
		return -EEXIST;
	t = tsm_register(&lt_parent->dev, &linktsm_ops);
	if (IS_ERR(t))
		return PTR_ERR(t);
	lt_tsm = t;
	rec("tsm=%s", dev_name(&t->dev));
	return 0;
}

static int do_unregister(void)
{
	ktime_t start;

	if (!lt_tsm)
		return -ENOENT;
	rec("tsm=%s", dev_name(&lt_tsm->dev));
	start = ktime_get();
	tsm_unregister(lt_tsm);
	rec("duration_ns=%lld", ktime_to_ns(ktime_sub(ktime_get(), start)));
	lt_tsm = NULL;
	return 0;
}

static int parse_op(const char *s)
{
	int i;

	for (i = 0; i < OP_NR; i++)
		if (!strcmp(s, lt_op_names[i]))
			return i;
	return -EINVAL;
}

static int cmd_inject(char **argv, int argc)
{
	unsigned int count = 1;
	int op, e, rc;

	if (argc == 2 && !strcmp(argv[1], "clear")) {
		mutex_lock(&lt_st_lock);
		memset(lt_inj_count, 0, sizeof(lt_inj_count));
		mutex_unlock(&lt_st_lock);
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "probe_fail")) {
		if (argc > 3)
			return -EINVAL;
		if (argc == 3 && kstrtouint(argv[2], 0, &count))
			return -EINVAL;
		op = OP_PROBE;
		e = ENODEV;
	} else {
		if (argc != 3 && argc != 4)
			return -EINVAL;
		op = parse_op(argv[1]);
		if (op < 0 || !op_injectable(op))
			return -EINVAL;
		rc = kstrtoint(argv[2], 0, &e);
		if (rc)
			return rc;
		e = abs(e);
		if (e == 0 || e >= MAX_ERRNO)
			return -EINVAL;
		if (argc == 4 && kstrtouint(argv[3], 0, &count))
			return -EINVAL;
	}
	mutex_lock(&lt_st_lock);
	lt_inj_errno[op] = e;
	lt_inj_count[op] = count;
	mutex_unlock(&lt_st_lock);
	rec("op=%s errno=%d count=%u", lt_op_names[op], -e, count);
	return 0;
}

static int cmd_bind(const char *bdf, u64 cookie, u32 tdi_id)
{
	struct pci_dev *pdev = lt_lookup_bdf(bdf);
	ktime_t start;
	int rc;

	if (IS_ERR(pdev))
		return PTR_ERR(pdev);
	rec("dev=%s kvm=0x%llx tdi_id=%u", pci_name(pdev), cookie, tdi_id);
	start = ktime_get();
	rc = pci_tsm_bind(pdev, (struct kvm *)(unsigned long)cookie, tdi_id);
	rec("duration_ns=%lld", ktime_to_ns(ktime_sub(ktime_get(), start)));
	pci_dev_put(pdev);
	return rc;
}

static int cmd_unbind(const char *bdf)
{
	struct pci_dev *pdev = lt_lookup_bdf(bdf);
	ktime_t start;

	if (IS_ERR(pdev))
		return PTR_ERR(pdev);
	rec("dev=%s", pci_name(pdev));
	start = ktime_get();
	pci_tsm_unbind(pdev);
	rec("duration_ns=%lld", ktime_to_ns(ktime_sub(ktime_get(), start)));
	pci_dev_put(pdev);
	return 0;
}

static int cmd_guest_req(const char *bdf, u32 scope, u32 in_len, u32 out_len)
{
	struct pci_dev *pdev;
	u8 *in = NULL, *out = NULL;
	u64 code = 0, out_sum = 0;
	char err[32];
	ktime_t start;
	ssize_t r;
	u32 i;

	if (in_len > GR_MAX || out_len > GR_MAX)
		return -E2BIG;
	pdev = lt_lookup_bdf(bdf);
	if (IS_ERR(pdev))
		return PTR_ERR(pdev);
	in = kmalloc(GR_MAX, GFP_KERNEL);
	out = kzalloc(GR_MAX, GFP_KERNEL);
	if (!in || !out) {
		r = -ENOMEM;
		goto out;
	}
	for (i = 0; i < in_len; i++)
		in[i] = i & 0xff;
	rec("dev=%s scope=%u in_len=%u out_len=%u", pci_name(pdev), scope,
	    in_len, out_len);
	start = ktime_get();
	r = pci_tsm_guest_req(pdev, scope, KERNEL_SOCKPTR(in), in_len,
			      KERNEL_SOCKPTR(out), out_len, &code);
	rec("duration_ns=%lld", ktime_to_ns(ktime_sub(ktime_get(), start)));
	for (i = 0; i < out_len; i++)
		out_sum += out[i];
	lt_errname(err, sizeof(err), r);
	rec("ret=%zd ret_err=%s residue=%zd tsm_code=0x%llx out_sum=%llu", r,
	    err, r >= 0 ? r : 0, code, out_sum);
out:
	kfree(in);
	kfree(out);
	pci_dev_put(pdev);
	return r < 0 ? r : 0;
}

int lt_run_cmd(char **argv, int argc)
{
	const char *c = argv[0];
	struct pci_dev *pdev;
	u32 a, b, d;
	u64 v;
	int rc;

	if (!strncmp(c, "ide_", 4)) {
		rc = lt_ide_cmd(argv, argc);
		return rc == -ENOIOCTLCMD ? -EINVAL : rc;
	}
	if (!strcmp(c, "register") && argc == 1)
		return lt_do_register();
	if (!strcmp(c, "unregister") && argc == 1)
		return do_unregister();
	if ((!strcmp(c, "tee") || !strcmp(c, "untee")) && argc == 2) {
		if (lt_tsm)
			return -EBUSY;
		pdev = lt_lookup_bdf(argv[1]);
		if (IS_ERR(pdev))
			return PTR_ERR(pdev);
		rec("dev=%s", pci_name(pdev));
		if (!strcmp(c, "tee"))
			return lt_tee_mark(pdev);
		rc = lt_tee_find(pdev);
		pci_dev_put(pdev);
		if (rc < 0)
			return -ENOENT;
		lt_tee_unmark(rc);
		return 0;
	}
	if (!strcmp(c, "inject"))
		return cmd_inject(argv, argc);
	if (!strcmp(c, "spdm_fail"))
		return lt_cmd_spdm_fail(argv, argc);
	if (!strcmp(c, "spdm_run"))
		return lt_cmd_spdm_run(argv, argc);
	if (!strcmp(c, "delay") && argc == 3) {
		int op = parse_op(argv[1]);

		if (op < 0 || kstrtou32(argv[2], 0, &a))
			return -EINVAL;
		mutex_lock(&lt_st_lock);
		lt_delay_us[op] = a;
		mutex_unlock(&lt_st_lock);
		rec("op=%s delay_us=%u", lt_op_names[op], a);
		return 0;
	}
	if (!strcmp(c, "guest_req_residue") && argc == 2) {
		if (kstrtou32(argv[1], 0, &a))
			return -EINVAL;
		mutex_lock(&lt_st_lock);
		lt_residue_cfg = a;
		mutex_unlock(&lt_st_lock);
		rec("residue=%u", a);
		return 0;
	}
	if (!strcmp(c, "tsm_code") && argc == 2) {
		if (kstrtou64(argv[1], 0, &v))
			return -EINVAL;
		mutex_lock(&lt_st_lock);
		lt_tsm_code_cfg = v;
		mutex_unlock(&lt_st_lock);
		rec("tsm_code=0x%llx", v);
		return 0;
	}
	if (!strcmp(c, "bind") && argc == 4) {
		if (kstrtou64(argv[2], 0, &v) || kstrtou32(argv[3], 0, &a))
			return -EINVAL;
		return cmd_bind(argv[1], v, a);
	}
	if (!strcmp(c, "unbind") && argc == 2)
		return cmd_unbind(argv[1]);
	if (!strcmp(c, "guest_req") && argc == 5) {
		if (kstrtou32(argv[2], 0, &a) || kstrtou32(argv[3], 0, &b) ||
		    kstrtou32(argv[4], 0, &d))
			return -EINVAL;
		return cmd_guest_req(argv[1], a, b, d);
	}
	if (!strcmp(c, "errname") && argc == 2) {
		char name[32];

		if (kstrtou32(argv[1], 0, &a) || !a || a > MAX_ERRNO)
			return -EINVAL;
		lt_errname(name, sizeof(name), -(long)a);
		rec("errno=%u name=%s", a, name);
		return 0;
	}
	if (!strcmp(c, "events_clear") && argc == 1) {
		lt_events_clear();
		return 0;
	}
	return -EINVAL;
}
