// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_linktsm - test fixture for tsm-trace: a link TSM driver for the REAL
 * upstream PCI TSM core (drivers/pci/tsm.c, drivers/virt/coco/tsm-core.c).
 *
 * This file: module parameters, locks, the ground-truth logs, the debugfs files
 * and init/exit; linktsm_ops.c has the link ops, linktsm_tee.c the TEE marking,
 * linktsm_cmds.c the ctl commands, linktsm_spdm.c connect's SPDM helpers
 * (private header: linktsm.h).
 *
 * Needs CONFIG_PCI_TSM (7.x).  It marks chosen PCIe devices TEE-capable
 * (PCI_EXP_DEVCAP_TEE in the cached pdev->devcap, what is_pci_tsm_pf0()
 * looks at besides ide_cap), then registers a link TSM with tsm_register()
 * whose pci_tsm_ops.link_ops are this module's own exported functions:
 *
 *   struct pci_tsm *linktsm_probe(struct tsm_dev *, struct pci_dev *)
 *   void            linktsm_remove(struct pci_tsm *)
 *   int             linktsm_connect(struct pci_dev *)
 *   void            linktsm_disconnect(struct pci_dev *)
 *   struct pci_tdi *linktsm_bind(struct pci_dev *, struct kvm *, u32 tdi_id)
 *   void            linktsm_unbind(struct pci_tdi *)
 *   ssize_t         linktsm_guest_req(struct pci_tdi *, enum pci_tsm_req_scope,
 *                                     sockptr_t, size_t, sockptr_t, size_t,
 *                                     u64 *tsm_code)
 *
 * probe builds a struct pci_tsm_pf0 (DSM, function 0: mutex_init, no DOE
 * mailbox) or a bare struct pci_tsm (sub-function probed by the core after a
 * connect of its function 0) through pci_tsm_link_constructor(); bind builds
 * a struct pci_tdi through pci_tsm_tdi_constructor().
 *
 * Module parameters:
 *   tee=auto|none|<bdf>[,<bdf>...]  devices to mark TEE-capable at load
 *                                   (auto: every PCIe endpoint, upstream port
 *                                   or RC-integrated endpoint at function 0)
 *   autoregister=0|1                register the TSM at load
 *
 * Control: /sys/kernel/debug/tsm_linktsm/ctl, one command per write(); a
 * failing command makes write() return the negative errno.
 *   register | unregister             tsm_register() / tsm_unregister()
 *   tee <bdf> | untee <bdf>           set / clear DEVCAP_TEE (-EBUSY while
 *                                     registered: the core reads it then)
 *   inject <op> <errno> [count]       op = probe|connect|bind|guest_req: the
 *                                     next <count> (default 1) calls fail
 *                                     (probe returns NULL; the core then
 *                                     returns -ENXIO)
 *   inject probe_fail [count]         = inject probe -ENODEV [count]
 *   inject clear                      drop all injections
 *   spdm_fail <depth> <errno> [count] the SPDM helper at <depth> (1 session,
 *                                     2 exchange, 3 recv, 4 verify) returns
 *                                     -<errno> for its next <count> calls
 *                                     (default 1; at depth 2..4 message 1
 *                                     fails); connect fails with it.
 *                                     spdm_fail 0 0 clears (linktsm_spdm.c)
 *   spdm_run <bdf>                    the SPDM chain from the ctl write itself,
 *                                     outside any TSM operation
 *   delay <op> <us>                   op = probe|remove|connect|disconnect|
 *                                     bind|unbind|guest_req sleeps <us>
 *   guest_req_residue <n>             guest_req returns this residue
 *   tsm_code <u64>                    guest_req stores this in *tsm_code
 *   bind <bdf> <kvm_cookie> <tdi_id>  pci_tsm_bind(pdev, (struct kvm *)cookie)
 *   unbind <bdf>                      pci_tsm_unbind(pdev)
 *   guest_req <bdf> <scope> <in_len> <out_len>
 *                                     pci_tsm_guest_req() with kernel
 *                                     sockptrs; input bytes are i & 0xff
 *   events_clear                      empty the events log
 *   errname <n>                       records name=<%pe of -n>: the kernel's
 *                                     own name of an errno a caller saw
 *   ide_*                             PCIe IDE emulation and streams: see
 *                                     linktsm_ide.c
 *
 * Ground truth:
 *   last    the last ctl command: "seq=<n> cmd=<c> rc=<-errno|0> err=<%pe|0>
 *           pid=<tgid> comm=<comm> ..." (+ dev, kvm, tdi_id, ret, residue,
 *           tsm_code, out_sum, tsm, duration_ns as relevant)
 *   events  one line per link op call, appended by the op itself:
 *           "seq=<n> op=<op> dev=<bdf> tsm=<tsmN> rc=<-errno|0> err=<%pe|0>
 *            ns=<own duration> pid=<tgid> comm=<comm> ..." + per op:
 *             probe:     role=pf0|fn dsm=<bdf>|none ret=0x...|null
 *             remove:    role=pf0|fn
 *             bind:      kvm=0x... tdi_id=<n>
 *             unbind:    kvm=0x... tdi_id=<n>
 *             guest_req: kvm=0x... tdi_id=<n> scope=<n> in_len=<n>
 *                        out_len=<n> in_sum=<n> ret=<n> tsm_code=0x...
 *             spdm_session|spdm_exchange|spdm_recv|spdm_verify (connect's
 *                        helpers, before its IDE work; logged at each
 *                        helper's return, so deepest first):
 *                        depth=<1..4> msg=<1|2> (0: the session)
 *           read it; write anything to it (or ctl events_clear) to clear.
 *   info    "registered=0|1 tsm=<tsmN|none> tee=<bdf,...> contexts=<n>
 *            tdis=<n> events=<n> dropped=<n> errname=<%pe of -EIO>"
 * The errno names are the kernel's own %pe output (CONFIG_SYMBOLIC_ERRNAME).
 */
#include "linktsm.h"

/* tee=: in linktsm_tee.c, with the marking it drives. */
static bool autoregister;
module_param(autoregister, bool, 0444);
MODULE_PARM_DESC(autoregister, "register the link TSM at load");

/*
 * Locks: ctl_lock serialises ctl commands (it is held while calling into the
 * core).  st_lock protects injections, delays, counters and the logs; the
 * ops take only st_lock (they run under the core's pci_tsm_rwsem), and no
 * core function is called with st_lock held.
 */
static DEFINE_MUTEX(ctl_lock);
DEFINE_MUTEX(lt_st_lock);

static struct dentry *lt_dir;
struct faux_device *lt_parent;
struct tsm_dev *lt_tsm;

/* ---- Logs ---- */

#define EV_SIZE (64 * 1024)
static char *ev_buf;
static size_t ev_len;
static u64 ev_seq, ev_count, ev_dropped;

#define REC_SIZE 1024
static char rec_buf[REC_SIZE];
static size_t rec_len;
static char last_buf[REC_SIZE];
static u64 ctl_seq;

void lt_errname(char *buf, size_t size, long rc)
{
	if (rc < 0 && rc >= -MAX_ERRNO)
		snprintf(buf, size, "%pe", ERR_PTR(rc));
	else
		snprintf(buf, size, "0");
}

/* Append one event line; "extra" starts with a space or is empty. */
__printf(6, 7) void lt_ev(int op, struct pci_dev *pdev,
			  struct tsm_dev *tsm_dev, long rc, s64 ns,
			  const char *fmt, ...)
{
	char extra[384], err[32], comm[TASK_COMM_LEN];
	va_list args;

	va_start(args, fmt);
	vscnprintf(extra, sizeof(extra), fmt, args);
	va_end(args);
	lt_errname(err, sizeof(err), rc);
	get_task_comm(comm, current);

	mutex_lock(&lt_st_lock);
	if (ev_len + 640 > EV_SIZE) {
		ev_dropped++;
	} else {
		ev_len += scnprintf(ev_buf + ev_len, EV_SIZE - ev_len,
				    "seq=%llu op=%s dev=%s tsm=%s rc=%ld err=%s ns=%lld pid=%d comm=%s%s\n",
				    ++ev_seq, lt_op_names[op],
				    pdev ? pci_name(pdev) : "none",
				    tsm_dev ? dev_name(&tsm_dev->dev) : "none",
				    rc, err, ns, task_tgid_nr(current), comm,
				    extra);
		ev_count++;
	}
	mutex_unlock(&lt_st_lock);
}

__printf(1, 2) void lt_rec(const char *fmt, ...)
{
	va_list args;

	if (rec_len >= REC_SIZE - 1)
		return;
	rec_buf[rec_len++] = ' ';
	va_start(args, fmt);
	rec_len += vscnprintf(rec_buf + rec_len, REC_SIZE - rec_len, fmt, args);
	va_end(args);
}

#define MAX_ARGS 6

static ssize_t ctl_write(struct file *file, const char __user *ubuf,
			 size_t count, loff_t *ppos)
{
	char buf[256], *p, *tok, *argv[MAX_ARGS + 1];
	char comm[TASK_COMM_LEN], err[32];
	int argc = 0, rc;

	if (count >= sizeof(buf))
		return -E2BIG;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';
	p = strim(buf);
	while ((tok = strsep(&p, " \t\n")) != NULL) {
		if (!*tok)
			continue;
		if (argc >= MAX_ARGS)
			return -E2BIG;
		argv[argc++] = tok;
	}
	if (!argc)
		return -EINVAL;

	mutex_lock(&ctl_lock);
	rec_len = 0;
	rec_buf[0] = '\0';
	rc = lt_run_cmd(argv, argc);
	get_task_comm(comm, current);
	lt_errname(err, sizeof(err), rc);
	scnprintf(last_buf, REC_SIZE,
		  "seq=%llu cmd=%s rc=%d err=%s pid=%d comm=%s%s\n", ++ctl_seq,
		  argv[0], rc, err, task_tgid_nr(current), comm, rec_buf);
	mutex_unlock(&ctl_lock);
	return rc ? rc : count;
}

static ssize_t last_read(struct file *file, char __user *ubuf, size_t count,
			 loff_t *ppos)
{
	char *copy = kmalloc(REC_SIZE, GFP_KERNEL);
	ssize_t ret;

	if (!copy)
		return -ENOMEM;
	mutex_lock(&ctl_lock);
	memcpy(copy, last_buf, REC_SIZE);
	mutex_unlock(&ctl_lock);
	ret = simple_read_from_buffer(ubuf, count, ppos, copy, strlen(copy));
	kfree(copy);
	return ret;
}

static ssize_t events_read(struct file *file, char __user *ubuf, size_t count,
			   loff_t *ppos)
{
	char *copy = kvmalloc(EV_SIZE, GFP_KERNEL);
	size_t len;
	ssize_t ret;

	if (!copy)
		return -ENOMEM;
	mutex_lock(&lt_st_lock);
	len = ev_len;
	memcpy(copy, ev_buf, len);
	mutex_unlock(&lt_st_lock);
	ret = simple_read_from_buffer(ubuf, count, ppos, copy, len);
	kvfree(copy);
	return ret;
}

void lt_events_clear(void)
{
	mutex_lock(&lt_st_lock);
	ev_len = 0;
	ev_buf[0] = '\0';
	mutex_unlock(&lt_st_lock);
}

static ssize_t events_write(struct file *file, const char __user *ubuf,
			    size_t count, loff_t *ppos)
{
	lt_events_clear();
	return count;
}

static ssize_t info_read(struct file *file, char __user *ubuf, size_t count,
			 loff_t *ppos)
{
	char buf[768], err[32];
	int len, i;

	mutex_lock(&ctl_lock);
	lt_errname(err, sizeof(err), -EIO);
	len = scnprintf(buf, sizeof(buf), "registered=%d tsm=%s tee=",
			lt_tsm ? 1 : 0, lt_tsm ? dev_name(&lt_tsm->dev) : "none");
	for (i = 0; i < lt_n_tee; i++)
		len += scnprintf(buf + len, sizeof(buf) - len, "%s%s",
				 i ? "," : "", pci_name(lt_tee_devs[i]));
	if (!lt_n_tee)
		len += scnprintf(buf + len, sizeof(buf) - len, "none");
	mutex_lock(&lt_st_lock);
	len += scnprintf(buf + len, sizeof(buf) - len,
			 " contexts=%d tdis=%d events=%llu dropped=%llu errname=%s\n",
			 atomic_read(&lt_n_contexts), atomic_read(&lt_n_tdis),
			 ev_count, ev_dropped, err);
	mutex_unlock(&lt_st_lock);
	mutex_unlock(&ctl_lock);
	return simple_read_from_buffer(ubuf, count, ppos, buf, len);
}

static const struct file_operations ctl_fops = {
	.owner = THIS_MODULE,
	.write = ctl_write,
	.llseek = noop_llseek,
};

static const struct file_operations last_fops = {
	.owner = THIS_MODULE,
	.read = last_read,
	.llseek = default_llseek,
};

static const struct file_operations events_fops = {
	.owner = THIS_MODULE,
	.read = events_read,
	.write = events_write,
	.llseek = default_llseek,
};

static const struct file_operations info_fops = {
	.owner = THIS_MODULE,
	.read = info_read,
	.llseek = default_llseek,
};

static int __init linktsm_init(void)
{
	int rc;

	ev_buf = kvzalloc(EV_SIZE, GFP_KERNEL);
	if (!ev_buf)
		return -ENOMEM;
	lt_parent = faux_device_create("tsm_linktsm", NULL, NULL);
	if (!lt_parent) {
		kvfree(ev_buf);
		return -ENODEV;
	}
	lt_tee_from_param();
	if (autoregister) {
		rc = lt_do_register();
		if (rc) {
			while (lt_n_tee)
				lt_tee_unmark(0);
			faux_device_destroy(lt_parent);
			kvfree(ev_buf);
			return rc;
		}
	}
	lt_dir = debugfs_create_dir("tsm_linktsm", NULL);
	debugfs_create_file("ctl", 0200, lt_dir, NULL, &ctl_fops);
	debugfs_create_file("last", 0444, lt_dir, NULL, &last_fops);
	debugfs_create_file("events", 0644, lt_dir, NULL, &events_fops);
	debugfs_create_file("info", 0444, lt_dir, NULL, &info_fops);
	scnprintf(last_buf, REC_SIZE, "seq=0 cmd=none rc=0 err=0\n");
	pr_info("tsm_linktsm: loaded (%d TEE device(s), %s)\n", lt_n_tee,
		lt_tsm ? dev_name(&lt_tsm->dev) : "not registered");
	return 0;
}

static void __exit linktsm_exit(void)
{
	debugfs_remove_recursive(lt_dir);
	mutex_lock(&ctl_lock);
	if (lt_tsm) {
		tsm_unregister(lt_tsm);
		lt_tsm = NULL;
	}
	lt_ide_exit();
	while (lt_n_tee)
		lt_tee_unmark(0);
	mutex_unlock(&ctl_lock);
	faux_device_destroy(lt_parent);
	kvfree(ev_buf);
}

module_init(linktsm_init);
module_exit(linktsm_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tsm-trace test fixture: a link TSM driver for the real PCI TSM core");
