// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_linktsm - test fixture for tsm-trace: a link TSM driver for the REAL
 * upstream PCI TSM core (drivers/pci/tsm.c, drivers/virt/coco/tsm-core.c).
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
 *           read it; write anything to it (or ctl events_clear) to clear.
 *   info    "registered=0|1 tsm=<tsmN|none> tee=<bdf,...> contexts=<n>
 *            tdis=<n> events=<n> dropped=<n> errname=<%pe of -EIO>"
 * The errno names are the kernel's own %pe output (CONFIG_SYMBOLIC_ERRNAME).
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/debugfs.h>
#include <linux/pci.h>
#include <linux/pci-tsm.h>
#include <linux/tsm.h>
#include <linux/device/faux.h>
#include <linux/slab.h>
#include <linux/delay.h>
#include <linux/ktime.h>
#include <linux/mutex.h>
#include <linux/uaccess.h>
#include <linux/err.h>
#include <linux/sched.h>
#include <linux/sockptr.h>
#include <linux/string.h>
#include <linux/atomic.h>

#ifndef CONFIG_PCI_TSM
#error "tsm_linktsm needs CONFIG_PCI_TSM"
#endif

static char *tee = "auto";
module_param(tee, charp, 0444);
MODULE_PARM_DESC(tee, "auto, none, or comma-separated BDFs to mark TEE-capable");
static bool autoregister;
module_param(autoregister, bool, 0444);
MODULE_PARM_DESC(autoregister, "register the link TSM at load");

/* ---- Exported link ops (probe targets) ---- */

struct pci_tsm *linktsm_probe(struct tsm_dev *tsm_dev, struct pci_dev *pdev);
void linktsm_remove(struct pci_tsm *tsm);
int linktsm_connect(struct pci_dev *pdev);
void linktsm_disconnect(struct pci_dev *pdev);
struct pci_tdi *linktsm_bind(struct pci_dev *pdev, struct kvm *kvm, u32 tdi_id);
void linktsm_unbind(struct pci_tdi *tdi);
ssize_t linktsm_guest_req(struct pci_tdi *tdi, enum pci_tsm_req_scope scope,
			  sockptr_t req_in, size_t in_len, sockptr_t req_out,
			  size_t out_len, u64 *tsm_code);

enum lt_op {
	OP_PROBE,
	OP_REMOVE,
	OP_CONNECT,
	OP_DISCONNECT,
	OP_BIND,
	OP_UNBIND,
	OP_GUEST_REQ,
	OP_NR,
};

static const char *const op_names[OP_NR] = {
	[OP_PROBE] = "probe",		[OP_REMOVE] = "remove",
	[OP_CONNECT] = "connect",	[OP_DISCONNECT] = "disconnect",
	[OP_BIND] = "bind",		[OP_UNBIND] = "unbind",
	[OP_GUEST_REQ] = "guest_req",
};

/* Ops with a result that can be injected. */
static bool op_injectable(int op)
{
	return op == OP_PROBE || op == OP_CONNECT || op == OP_BIND ||
	       op == OP_GUEST_REQ;
}

/*
 * Locks: ctl_lock serialises ctl commands (it is held while calling into the
 * core).  st_lock protects injections, delays, counters and the logs; the
 * ops take only st_lock (they run under the core's pci_tsm_rwsem), and no
 * core function is called with st_lock held.
 */
static DEFINE_MUTEX(ctl_lock);
static DEFINE_MUTEX(st_lock);

static struct dentry *lt_dir;
static struct faux_device *lt_parent;
static struct tsm_dev *lt_tsm;

static int inj_errno[OP_NR];
static unsigned int inj_count[OP_NR];
static unsigned long delay_us[OP_NR];
static size_t residue_cfg;
static u64 tsm_code_cfg;

static atomic_t n_contexts = ATOMIC_INIT(0);
static atomic_t n_tdis = ATOMIC_INIT(0);

/* Devices this module marked TEE-capable (it restores their devcap). */
#define MAX_TEE 16
static struct pci_dev *tee_devs[MAX_TEE];
static bool tee_set_bit[MAX_TEE];
static int n_tee;

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

static void errname(char *buf, size_t size, long rc)
{
	if (rc < 0 && rc >= -MAX_ERRNO)
		snprintf(buf, size, "%pe", ERR_PTR(rc));
	else
		snprintf(buf, size, "0");
}

/* Append one event line; "extra" starts with a space or is empty. */
static __printf(6, 7) void ev(int op, struct pci_dev *pdev,
			      struct tsm_dev *tsm_dev, long rc, s64 ns,
			      const char *fmt, ...)
{
	char extra[384], err[32], comm[TASK_COMM_LEN];
	va_list args;

	va_start(args, fmt);
	vscnprintf(extra, sizeof(extra), fmt, args);
	va_end(args);
	errname(err, sizeof(err), rc);
	get_task_comm(comm, current);

	mutex_lock(&st_lock);
	if (ev_len + 640 > EV_SIZE) {
		ev_dropped++;
	} else {
		ev_len += scnprintf(ev_buf + ev_len, EV_SIZE - ev_len,
				    "seq=%llu op=%s dev=%s tsm=%s rc=%ld err=%s ns=%lld pid=%d comm=%s%s\n",
				    ++ev_seq, op_names[op],
				    pdev ? pci_name(pdev) : "none",
				    tsm_dev ? dev_name(&tsm_dev->dev) : "none",
				    rc, err, ns, task_tgid_nr(current), comm,
				    extra);
		ev_count++;
	}
	mutex_unlock(&st_lock);
}

static __printf(1, 2) void rec(const char *fmt, ...)
{
	va_list args;

	if (rec_len >= REC_SIZE - 1)
		return;
	rec_buf[rec_len++] = ' ';
	va_start(args, fmt);
	rec_len += vscnprintf(rec_buf + rec_len, REC_SIZE - rec_len, fmt, args);
	va_end(args);
}

/* Delay (if configured) and consume an injection; returns 0 or -errno. */
static int op_enter(int op)
{
	unsigned long us;
	int rc = 0;

	mutex_lock(&st_lock);
	us = delay_us[op];
	if (inj_count[op]) {
		inj_count[op]--;
		rc = -inj_errno[op];
	}
	mutex_unlock(&st_lock);
	if (us >= 20000)
		msleep(DIV_ROUND_UP(us, 1000));
	else if (us)
		usleep_range(us, us + 50);
	return rc;
}

static struct tsm_dev *tsm_of(struct pci_dev *pdev)
{
	return pdev && pdev->tsm ? pdev->tsm->tsm_dev : NULL;
}

/* ---- Link ops ---- */

noinline struct pci_tsm *linktsm_probe(struct tsm_dev *tsm_dev,
				       struct pci_dev *pdev)
{
	ktime_t start = ktime_get();
	struct pci_tsm *ret = NULL;
	const char *role;
	int rc;

	role = is_pci_tsm_pf0(pdev) ? "pf0" : "fn";
	rc = op_enter(OP_PROBE);
	if (rc)
		goto out;
	if (is_pci_tsm_pf0(pdev)) {
		struct pci_tsm_pf0 *pf0 = kzalloc(sizeof(*pf0), GFP_KERNEL);

		if (!pf0) {
			rc = -ENOMEM;
			goto out;
		}
		mutex_init(&pf0->lock);
		pf0->doe_mb = NULL;	/* no DOE mailbox: no pf0_constructor */
		rc = pci_tsm_link_constructor(pdev, &pf0->base_tsm, tsm_dev);
		if (rc) {
			mutex_destroy(&pf0->lock);
			kfree(pf0);
			goto out;
		}
		ret = &pf0->base_tsm;
	} else {
		struct pci_tsm *t = kzalloc(sizeof(*t), GFP_KERNEL);

		if (!t) {
			rc = -ENOMEM;
			goto out;
		}
		rc = pci_tsm_link_constructor(pdev, t, tsm_dev);
		if (rc) {
			kfree(t);
			goto out;
		}
		ret = t;
	}
	atomic_inc(&n_contexts);
out:
	if (ret)
		ev(OP_PROBE, pdev, tsm_dev, rc,
		   ktime_to_ns(ktime_sub(ktime_get(), start)),
		   " role=%s dsm=%s ret=0x%px", role, pci_name(ret->dsm_dev),
		   ret);
	else
		ev(OP_PROBE, pdev, tsm_dev, rc,
		   ktime_to_ns(ktime_sub(ktime_get(), start)),
		   " role=%s dsm=none ret=null", role);
	return ret;
}
EXPORT_SYMBOL_GPL(linktsm_probe);

noinline void linktsm_remove(struct pci_tsm *tsm)
{
	ktime_t start = ktime_get();
	struct pci_dev *pdev = tsm->pdev;
	struct tsm_dev *tsm_dev = tsm->tsm_dev;
	bool pf0 = tsm->dsm_dev == tsm->pdev;

	op_enter(OP_REMOVE);
	if (pf0) {
		struct pci_tsm_pf0 *p =
			container_of(tsm, struct pci_tsm_pf0, base_tsm);

		pci_tsm_pf0_destructor(p);
		kfree(p);
	} else {
		kfree(tsm);
	}
	atomic_dec(&n_contexts);
	ev(OP_REMOVE, pdev, tsm_dev, 0,
	   ktime_to_ns(ktime_sub(ktime_get(), start)), " role=%s",
	   pf0 ? "pf0" : "fn");
}
EXPORT_SYMBOL_GPL(linktsm_remove);

noinline int linktsm_connect(struct pci_dev *pdev)
{
	ktime_t start = ktime_get();
	int rc = op_enter(OP_CONNECT);

	ev(OP_CONNECT, pdev, tsm_of(pdev), rc,
	   ktime_to_ns(ktime_sub(ktime_get(), start)), "%s", "");
	return rc;
}
EXPORT_SYMBOL_GPL(linktsm_connect);

noinline void linktsm_disconnect(struct pci_dev *pdev)
{
	ktime_t start = ktime_get();

	op_enter(OP_DISCONNECT);
	ev(OP_DISCONNECT, pdev, tsm_of(pdev), 0,
	   ktime_to_ns(ktime_sub(ktime_get(), start)), "%s", "");
}
EXPORT_SYMBOL_GPL(linktsm_disconnect);

noinline struct pci_tdi *linktsm_bind(struct pci_dev *pdev, struct kvm *kvm,
				      u32 tdi_id)
{
	ktime_t start = ktime_get();
	struct pci_tdi *tdi = NULL;
	int rc = op_enter(OP_BIND);

	if (!rc) {
		tdi = kzalloc(sizeof(*tdi), GFP_KERNEL);
		if (tdi) {
			pci_tsm_tdi_constructor(pdev, tdi, kvm, tdi_id);
			atomic_inc(&n_tdis);
		} else {
			rc = -ENOMEM;
		}
	}
	ev(OP_BIND, pdev, tsm_of(pdev), rc,
	   ktime_to_ns(ktime_sub(ktime_get(), start)), " kvm=0x%px tdi_id=%u",
	   kvm, tdi_id);
	return rc ? ERR_PTR(rc) : tdi;
}
EXPORT_SYMBOL_GPL(linktsm_bind);

noinline void linktsm_unbind(struct pci_tdi *tdi)
{
	ktime_t start = ktime_get();
	struct pci_dev *pdev = tdi->pdev;
	struct kvm *kvm = tdi->kvm;
	u32 tdi_id = tdi->tdi_id;

	op_enter(OP_UNBIND);
	kfree(tdi);
	atomic_dec(&n_tdis);
	ev(OP_UNBIND, pdev, tsm_of(pdev), 0,
	   ktime_to_ns(ktime_sub(ktime_get(), start)), " kvm=0x%px tdi_id=%u",
	   kvm, tdi_id);
}
EXPORT_SYMBOL_GPL(linktsm_unbind);

#define GR_MAX 4096

noinline ssize_t linktsm_guest_req(struct pci_tdi *tdi,
				   enum pci_tsm_req_scope scope,
				   sockptr_t req_in, size_t in_len,
				   sockptr_t req_out, size_t out_len,
				   u64 *tsm_code)
{
	ktime_t start = ktime_get();
	u8 *buf = NULL;
	u64 in_sum = 0;
	size_t residue, fill, i;
	ssize_t ret;
	u64 code;
	int rc;

	rc = op_enter(OP_GUEST_REQ);
	mutex_lock(&st_lock);
	residue = residue_cfg;
	code = tsm_code_cfg;
	mutex_unlock(&st_lock);
	if (tsm_code)
		*tsm_code = code;
	if (rc) {
		ret = rc;
		goto out;
	}
	if (in_len > GR_MAX || out_len > GR_MAX) {
		ret = rc = -E2BIG;
		goto out;
	}
	buf = kzalloc(GR_MAX, GFP_KERNEL);
	if (!buf) {
		ret = rc = -ENOMEM;
		goto out;
	}
	if (in_len && !sockptr_is_null(req_in)) {
		if (copy_from_sockptr(buf, req_in, in_len)) {
			ret = rc = -EFAULT;
			goto out;
		}
		for (i = 0; i < in_len; i++)
			in_sum += buf[i];
	}
	if (residue > out_len)
		residue = out_len;
	fill = out_len - residue;
	if (fill && !sockptr_is_null(req_out)) {
		for (i = 0; i < fill; i++)
			buf[i] = 0xa5 ^ (u8)i;
		if (copy_to_sockptr(req_out, buf, fill)) {
			ret = rc = -EFAULT;
			goto out;
		}
	}
	ret = residue;
out:
	kfree(buf);
	ev(OP_GUEST_REQ, tdi->pdev, tsm_of(tdi->pdev), rc,
	   ktime_to_ns(ktime_sub(ktime_get(), start)),
	   " kvm=0x%px tdi_id=%u scope=%u in_len=%zu out_len=%zu in_sum=%llu ret=%zd tsm_code=0x%llx",
	   tdi->kvm, tdi->tdi_id, (unsigned int)scope, in_len, out_len, in_sum,
	   ret, tsm_code ? *tsm_code : 0);
	return ret;
}
EXPORT_SYMBOL_GPL(linktsm_guest_req);

static struct pci_tsm_ops linktsm_ops = {
	.link_ops = {
		.probe = linktsm_probe,
		.remove = linktsm_remove,
		.connect = linktsm_connect,
		.disconnect = linktsm_disconnect,
		.bind = linktsm_bind,
		.unbind = linktsm_unbind,
		.guest_req = linktsm_guest_req,
	},
};

/* ---- TEE marking ---- */

static bool tee_candidate(struct pci_dev *pdev)
{
	if (!pci_is_pcie(pdev) || pdev->is_virtfn ||
	    PCI_FUNC(pdev->devfn) != 0)
		return false;
	switch (pci_pcie_type(pdev)) {
	case PCI_EXP_TYPE_ENDPOINT:
	case PCI_EXP_TYPE_UPSTREAM:
	case PCI_EXP_TYPE_RC_END:
		return true;
	default:
		return false;
	}
}

static int tee_find(struct pci_dev *pdev)
{
	int i;

	for (i = 0; i < n_tee; i++)
		if (tee_devs[i] == pdev)
			return i;
	return -1;
}

/* Takes over the caller's reference on success. */
static int tee_mark(struct pci_dev *pdev)
{
	if (tee_find(pdev) >= 0) {
		pci_dev_put(pdev);
		return -EEXIST;
	}
	if (!pci_is_pcie(pdev)) {
		pci_dev_put(pdev);
		return -ENOTTY;
	}
	if (n_tee >= MAX_TEE) {
		pci_dev_put(pdev);
		return -ENOSPC;
	}
	tee_devs[n_tee] = pdev;
	tee_set_bit[n_tee] = !(pdev->devcap & PCI_EXP_DEVCAP_TEE);
	pdev->devcap |= PCI_EXP_DEVCAP_TEE;
	n_tee++;
	return 0;
}

static void tee_unmark(int i)
{
	if (tee_set_bit[i])
		tee_devs[i]->devcap &= ~PCI_EXP_DEVCAP_TEE;
	pci_dev_put(tee_devs[i]);
	tee_devs[i] = tee_devs[n_tee - 1];
	tee_set_bit[i] = tee_set_bit[n_tee - 1];
	n_tee--;
}

static struct pci_dev *lookup_bdf(const char *name)
{
	unsigned int domain = 0, bus, slot, fn;

	if (sscanf(name, "%x:%x:%x.%x", &domain, &bus, &slot, &fn) != 4) {
		domain = 0;
		if (sscanf(name, "%x:%x.%x", &bus, &slot, &fn) != 3)
			return ERR_PTR(-EINVAL);
	}
	if (bus > 255 || slot > 31 || fn > 7)
		return ERR_PTR(-EINVAL);
	return pci_get_domain_bus_and_slot(domain, bus, PCI_DEVFN(slot, fn)) ?:
	       ERR_PTR(-ENODEV);
}

static void tee_from_param(void)
{
	struct pci_dev *pdev = NULL;
	char *s, *p, *tok;

	if (!tee || !strcmp(tee, "none") || !*tee)
		return;
	if (!strcmp(tee, "auto")) {
		for_each_pci_dev(pdev)
			if (tee_candidate(pdev))
				tee_mark(pci_dev_get(pdev));
		return;
	}
	s = kstrdup(tee, GFP_KERNEL);
	if (!s)
		return;
	p = s;
	while ((tok = strsep(&p, ",")) != NULL) {
		struct pci_dev *d = lookup_bdf(tok);

		if (IS_ERR(d))
			pr_warn("tsm_linktsm: tee=%s: %pe\n", tok, d);
		else
			tee_mark(d);
	}
	kfree(s);
}

/* ---- Commands ---- */

static int do_register(void)
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
		if (!strcmp(s, op_names[i]))
			return i;
	return -EINVAL;
}

static int cmd_inject(char **argv, int argc)
{
	unsigned int count = 1;
	int op, e, rc;

	if (argc == 2 && !strcmp(argv[1], "clear")) {
		mutex_lock(&st_lock);
		memset(inj_count, 0, sizeof(inj_count));
		mutex_unlock(&st_lock);
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
	mutex_lock(&st_lock);
	inj_errno[op] = e;
	inj_count[op] = count;
	mutex_unlock(&st_lock);
	rec("op=%s errno=%d count=%u", op_names[op], -e, count);
	return 0;
}

static int cmd_bind(const char *bdf, u64 cookie, u32 tdi_id)
{
	struct pci_dev *pdev = lookup_bdf(bdf);
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
	struct pci_dev *pdev = lookup_bdf(bdf);
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
	pdev = lookup_bdf(bdf);
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
	errname(err, sizeof(err), r);
	rec("ret=%zd ret_err=%s residue=%zd tsm_code=0x%llx out_sum=%llu", r,
	    err, r >= 0 ? r : 0, code, out_sum);
out:
	kfree(in);
	kfree(out);
	pci_dev_put(pdev);
	return r < 0 ? r : 0;
}

#define MAX_ARGS 6

static int run_cmd(char **argv, int argc)
{
	const char *c = argv[0];
	struct pci_dev *pdev;
	u32 a, b, d;
	u64 v;
	int rc;

	if (!strcmp(c, "register") && argc == 1)
		return do_register();
	if (!strcmp(c, "unregister") && argc == 1)
		return do_unregister();
	if ((!strcmp(c, "tee") || !strcmp(c, "untee")) && argc == 2) {
		if (lt_tsm)
			return -EBUSY;
		pdev = lookup_bdf(argv[1]);
		if (IS_ERR(pdev))
			return PTR_ERR(pdev);
		rec("dev=%s", pci_name(pdev));
		if (!strcmp(c, "tee"))
			return tee_mark(pdev);
		rc = tee_find(pdev);
		pci_dev_put(pdev);
		if (rc < 0)
			return -ENOENT;
		tee_unmark(rc);
		return 0;
	}
	if (!strcmp(c, "inject"))
		return cmd_inject(argv, argc);
	if (!strcmp(c, "delay") && argc == 3) {
		int op = parse_op(argv[1]);

		if (op < 0 || kstrtou32(argv[2], 0, &a))
			return -EINVAL;
		mutex_lock(&st_lock);
		delay_us[op] = a;
		mutex_unlock(&st_lock);
		rec("op=%s delay_us=%u", op_names[op], a);
		return 0;
	}
	if (!strcmp(c, "guest_req_residue") && argc == 2) {
		if (kstrtou32(argv[1], 0, &a))
			return -EINVAL;
		mutex_lock(&st_lock);
		residue_cfg = a;
		mutex_unlock(&st_lock);
		rec("residue=%u", a);
		return 0;
	}
	if (!strcmp(c, "tsm_code") && argc == 2) {
		if (kstrtou64(argv[1], 0, &v))
			return -EINVAL;
		mutex_lock(&st_lock);
		tsm_code_cfg = v;
		mutex_unlock(&st_lock);
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
		errname(name, sizeof(name), -(long)a);
		rec("errno=%u name=%s", a, name);
		return 0;
	}
	if (!strcmp(c, "events_clear") && argc == 1) {
		mutex_lock(&st_lock);
		ev_len = 0;
		ev_buf[0] = '\0';
		mutex_unlock(&st_lock);
		return 0;
	}
	return -EINVAL;
}

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
	rc = run_cmd(argv, argc);
	get_task_comm(comm, current);
	errname(err, sizeof(err), rc);
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
	mutex_lock(&st_lock);
	len = ev_len;
	memcpy(copy, ev_buf, len);
	mutex_unlock(&st_lock);
	ret = simple_read_from_buffer(ubuf, count, ppos, copy, len);
	kvfree(copy);
	return ret;
}

static ssize_t events_write(struct file *file, const char __user *ubuf,
			    size_t count, loff_t *ppos)
{
	mutex_lock(&st_lock);
	ev_len = 0;
	ev_buf[0] = '\0';
	mutex_unlock(&st_lock);
	return count;
}

static ssize_t info_read(struct file *file, char __user *ubuf, size_t count,
			 loff_t *ppos)
{
	char buf[768], err[32];
	int len, i;

	mutex_lock(&ctl_lock);
	errname(err, sizeof(err), -EIO);
	len = scnprintf(buf, sizeof(buf), "registered=%d tsm=%s tee=",
			lt_tsm ? 1 : 0, lt_tsm ? dev_name(&lt_tsm->dev) : "none");
	for (i = 0; i < n_tee; i++)
		len += scnprintf(buf + len, sizeof(buf) - len, "%s%s",
				 i ? "," : "", pci_name(tee_devs[i]));
	if (!n_tee)
		len += scnprintf(buf + len, sizeof(buf) - len, "none");
	mutex_lock(&st_lock);
	len += scnprintf(buf + len, sizeof(buf) - len,
			 " contexts=%d tdis=%d events=%llu dropped=%llu errname=%s\n",
			 atomic_read(&n_contexts), atomic_read(&n_tdis),
			 ev_count, ev_dropped, err);
	mutex_unlock(&st_lock);
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
	tee_from_param();
	if (autoregister) {
		rc = do_register();
		if (rc) {
			while (n_tee)
				tee_unmark(0);
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
	pr_info("tsm_linktsm: loaded (%d TEE device(s), %s)\n", n_tee,
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
	while (n_tee)
		tee_unmark(0);
	mutex_unlock(&ctl_lock);
	faux_device_destroy(lt_parent);
	kvfree(ev_buf);
}

module_init(linktsm_init);
module_exit(linktsm_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tsm-trace test fixture: a link TSM driver for the real PCI TSM core");
