// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_standin - test fixture for tsm-trace.  This file: the module state, the ground-truth
 * record, the debugfs files and init/exit; the layers live in the other standin_*.c files
 * (listed in standin.h), all linked into tsm_standin.ko.
 *
 * Stands in for the kernel code path of "[PATCH v2 2/3] iommufd/tsm: add
 * vdevice TSM bind/unbind ioctl" on kernels that do not carry it (or, built with
 * -DSTANDIN_GEN=5|6, of v5 or the post-v5 proposal: tsm_standin_gen.h).  It defines
 * and exports, with the patch's exact names and prototypes:
 *
 *   int  iommufd_vdevice_tsm_op_ioctl(struct iommufd_ucmd *ucmd);
 *   int  tsm_bind(struct device *dev, struct kvm *kvm, u64 tdi_id);
 *   int  tsm_unbind(struct device *dev);
 *   void iommufd_vdevice_abort(struct iommufd_object *obj);
 *
 * and the layers below them:
 *
 *   PCI layer   On kernels without upstream PCI TSM (CONFIG_PCI_TSM unset,
 *               e.g. 6.1) the module defines pci_tsm_bind()/pci_tsm_unbind()
 *               itself.  On kernels with it (7.x) those names belong to
 *               vmlinux, so the module's copy is called standin_pci_tsm_bind()
 *               / standin_pci_tsm_unbind(); "realpci 1" makes tsm_bind() call
 *               the real exported pci_tsm_bind()/pci_tsm_unbind() instead
 *               (which return -EINVAL for a device without TSM context).
 *   driver      void *standin_tdi_bind(struct pci_dev *, struct kvm *, u32)
 *               void  standin_tdi_unbind(struct pci_dev *)
 *   KVM         struct kvm stand-ins owned by the creating process
 *               (userspace_pid = tgid, stats_id = "kvm-<pid>"), destroyed
 *               through void kvm_destroy_vm(struct kvm *) when the last
 *               reference (the VM handle, or a vDevice's vIOMMU) goes away.
 *
 * Control: /sys/kernel/debug/tsm_standin/ctl, one command per write().  A
 * failing command makes write() return the negative errno (so `echo` fails)
 * and is recorded like a successful one.
 *
 *   vm_create <vm_id>                       new struct kvm owned by the caller
 *   vm_destroy <vm_id>                      drop the VM handle (kvm_destroy_vm
 *                                           runs once no vDevice uses it)
 *   vdev_create <vdev_id> <bdf|nonpci> <vm_id|nokvm> <virt_id>
 *                                           vDevice (object id = vdev_id) on a
 *                                           PCI device (e.g. 0000:00:02.0) or
 *                                           a non-PCI device; its vIOMMU holds
 *                                           the VM's file (or none: nokvm)
 *   ioctl <vdev_id> <op> <flags>            IOMMU_VDEVICE_TSM_OP: 1 bind,
 *                                           2 unbind, anything else invalid
 *   vdev_destroy <vdev_id> [nounbind]       iommufd_vdevice_abort(); nounbind
 *                                           skips the patch's tsm_unbind()
 *   tsm_bind <bdf|nonpci> <vm_id> <tdi_id>  call tsm_bind() directly
 *   tsm_bind nonpci badkvm <tdi_id>        tsm_bind() with a poisoned struct
 *                                           kvm * (it fails -EINVAL before
 *                                           using it; a probe's reads fault)
 *   tsm_unbind <bdf|nonpci>                 call tsm_unbind() directly
 *   disconnect <bdf>                        unbind through the PCI layer's
 *                                           internal path (like upstream
 *                                           pci_tsm_unbind_all()), bypassing
 *                                           pci_tsm_unbind()
 *   inject driver <errno> [count]           next <count> (default 1) driver
 *                                           binds fail with -errno
 *   inject respond_efault [count]           next <count> (default 1) respond
 *                                           steps fail with -EFAULT (after a
 *                                           successful bind/unbind)
 *   inject clear                            drop all injections
 *   delay_us <n>                            driver bind sleeps n microseconds
 *   respond_delay_us <n>                    the ioctl sleeps n us before responding (bound)
 *   storm <vdev> <n> [gap_us]               n bind+unbind pairs in one write (in-kernel loop),
 *                                           asleep gap_us after each pair (a steady rate)
 *   parallel <vdev> <n>                     n kernel threads call the driver's bind op
 *                                           (standin_tdi_bind, with delay_us) at once;
 *                                           records n started returned ok duration_ns
 *   tsm_req <vdev_id> <scope|op> <req_len> <resp_len>
 *                                           every generation (standin_req.c):
 *                                           the guest-request ioctl (0x96) through
 *                                           tsm_guest_req() to the real
 *                                           pci_tsm_guest_req() (7.x; else
 *                                           tsm_guest_req() is -EOPNOTSUPP)
 *   realpci 0|1                             see above (-EOPNOTSUPP if the
 *                                           kernel has no PCI TSM)
 *   guest_req <bdf> <scope> <in_len> <out_len>
 *                                           call the real pci_tsm_guest_req()
 *                                           (7.x; else -EOPNOTSUPP) with kernel
 *                                           sockptrs (input bytes i & 0xff);
 *                                           records layer=pci_tsm_guest_req
 *                                           scope in_len out_len guest_rc
 *                                           err (%pe or 0) residue tsm_code
 *                                           out_sum; a negative result is the
 *                                           write()'s errno
 *
 * /sys/kernel/debug/tsm_standin/last: ground truth of the last command as one
 * line of space-separated key=value pairs (values never contain spaces),
 * always starting with
 * "seq=<n> cmd=<name> rc=<-errno|0> err=<%pe|0> pid=<tgid> comm=<c>" (err: the
 * kernel's own name of rc, CONFIG_SYMBOLIC_ERRNAME);
 * further keys appear when known, in the order things happened:
 *   vm vdevice_id op flags virt_id obj_id dev (BDF or "tsm_standin")
 *   kvm kvm_pid stats_id       the VM the command used (kvm=0x0: none)
 *   tdi_id                     what tsm_bind() got (= vdevice virt_id)
 *   layer                      PCI-layer function called (standin_pci_tsm_bind,
 *                              pci_tsm_bind, ...)
 *   bound_kvm bound_kvm_pid bound_stats_id   binding found by the PCI layer
 *                              (idempotent / -EBUSY cases, disconnect)
 *   driver_called driver_rc driver_ns        standin_tdi_bind() ran, its rc
 *                              and its own measured duration (incl. delay)
 *   driver_unbind=1            standin_tdi_unbind() ran
 *   respond_rc                 the respond step after a successful op
 *   fail_fn fail_layer fail_err   where the command's error was born: the
 *                              first function that failed (a fixture
 *                              function, or a kernel function the fixture
 *                              called and saw fail), the layer it belongs
 *                              to (iommufd, tsm_core, pci_tsm, tsm_driver)
 *                              and its error as %pe
 *   duration_ns                iommufd_vdevice_tsm_op_ioctl() / abort / tsm_bind
 *   after_kvm after_kvm_pid after_stats_id   binding of the device afterwards
 *   destroyed destroyed_kvm destroyed_kvm_pid   kvm_destroy_vm() ran (or not)
 * Pointers are raw (0x%px), as a probe sees them.
 * /sys/kernel/debug/tsm_standin/bound: one line per bound device:
 *   dev=<bdf> kvm=0x... kvm_pid=<pid> stats_id=kvm-<pid> tdi_id=<n>
 * /sys/kernel/debug/tsm_standin/info: static facts (gen=v2|v5|post-v5, the
 *   generation built (-DSTANDIN_GEN, tsm_standin_gen.h), pci_tsm=real|standin,
 *   pci layer function names, realpci state, nonpci device name).
 */
#include "standin.h"

/* ---- Module state (everything runs under standin_lock) ---- */

DEFINE_MUTEX(standin_lock);
static struct dentry *standin_dir;
struct iommufd_ctx standin_ictx;

LIST_HEAD(standin_vms);
LIST_HEAD(standin_vdevs);
LIST_HEAD(standin_tdis);

static u64 standin_seq;

struct miscdevice standin_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "tsm_standin",
};

/* ---- Ground-truth record of the current/last command ---- */

#define REC_SIZE 1024
static char rec_buf[REC_SIZE];
static size_t rec_len;
static char last_buf[REC_SIZE];

/* Commands run one at a time (standin_lock), but `parallel` records from many threads. */
static DEFINE_SPINLOCK(rec_lock);

__printf(1, 2) void standin_rec(const char *fmt, ...)
{
	unsigned long irqflags;
	va_list args;

	spin_lock_irqsave(&rec_lock, irqflags);
	if (rec_len < REC_SIZE - 1) {
		rec_buf[rec_len++] = ' ';
		va_start(args, fmt);
		rec_len += vscnprintf(rec_buf + rec_len, REC_SIZE - rec_len,
				      fmt, args);
		va_end(args);
	}
	spin_unlock_irqrestore(&rec_lock, irqflags);
}

void standin_rec_reset(void)
{
	rec_len = 0;
	rec_buf[0] = '\0';
}

/*
 * Records where the current command's error was born (the first failure wins:
 * errors propagate outwards, so the innermost function records first) and
 * returns rc unchanged.
 */
static bool fail_recorded;

long standin_fail(const char *fn, const char *layer, long rc)
{
	if (rc < 0 && !fail_recorded) {
		fail_recorded = true;
		rec("fail_fn=%s fail_layer=%s fail_err=%pe", fn, layer,
		    ERR_PTR(rc));
	}
	return rc;
}

void standin_rec_kvm(const char *prefix, struct kvm *kvm)
{
	if (!kvm) {
		rec("%skvm=0x0", prefix);
		return;
	}
	rec("%skvm=0x%px %skvm_pid=%d %sstats_id=%s", prefix, kvm, prefix,
	    kvm->userspace_pid, prefix, kvm->stats_id);
}

#define MAX_ARGS 6

static ssize_t ctl_write(struct file *file, const char __user *ubuf,
			 size_t count, loff_t *ppos)
{
	char buf[256], *p, *tok, *argv[MAX_ARGS + 1];
	char comm[TASK_COMM_LEN], err[32] = "0";
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
		if (argc > MAX_ARGS)
			return -E2BIG;
		argv[argc++] = tok;
	}
	if (!argc)
		return -EINVAL;

	mutex_lock(&standin_lock);
	standin_rec_reset();
	fail_recorded = false;
	rc = standin_run_cmd(argv, argc, ubuf);
	get_task_comm(comm, current);
	if (rc)
		snprintf(err, sizeof(err), "%pe", ERR_PTR(rc));
	scnprintf(last_buf, REC_SIZE,
		  "seq=%llu cmd=%s rc=%d err=%s pid=%d comm=%s%s\n",
		  ++standin_seq, argv[0], rc, err, task_tgid_nr(current), comm,
		  rec_buf);
	mutex_unlock(&standin_lock);
	return rc ? rc : count;
}

static ssize_t last_read(struct file *file, char __user *ubuf, size_t count,
			 loff_t *ppos)
{
	char *copy;
	ssize_t ret;

	copy = kmalloc(REC_SIZE, GFP_KERNEL);
	if (!copy)
		return -ENOMEM;
	mutex_lock(&standin_lock);
	memcpy(copy, last_buf, REC_SIZE);
	mutex_unlock(&standin_lock);
	ret = simple_read_from_buffer(ubuf, count, ppos, copy, strlen(copy));
	kfree(copy);
	return ret;
}

static ssize_t bound_read(struct file *file, char __user *ubuf, size_t count,
			  loff_t *ppos)
{
	struct standin_tdi *tdi;
	size_t len = 0, size = PAGE_SIZE * 4;
	char *buf;
	ssize_t ret;

	buf = kmalloc(size, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	buf[0] = '\0';
	mutex_lock(&standin_lock);
	list_for_each_entry(tdi, &standin_tdis, node)
		len += scnprintf(buf + len, size - len,
				 "dev=%s kvm=0x%px kvm_pid=%d stats_id=%s tdi_id=%u\n",
				 pci_name(tdi->pdev), tdi->kvm,
				 tdi->kvm->userspace_pid, tdi->kvm->stats_id,
				 tdi->tdi_id);
	mutex_unlock(&standin_lock);
	ret = simple_read_from_buffer(ubuf, count, ppos, buf, len);
	kfree(buf);
	return ret;
}

static ssize_t info_read(struct file *file, char __user *ubuf, size_t count,
			 loff_t *ppos)
{
	char buf[256];
	int len;

	mutex_lock(&standin_lock);
	len = scnprintf(buf, sizeof(buf),
			"gen=%s pci_tsm=%s pci_bind=%s pci_unbind=%s realpci=%d nonpci_dev=%s\n",
			STANDIN_GEN_NAME,
			STANDIN_HAVE_REAL_PCI_TSM ? "real" : "standin",
			STR(STANDIN_PCI_BIND), STR(STANDIN_PCI_UNBIND), standin_realpci,
			dev_name(standin_misc.this_device));
	mutex_unlock(&standin_lock);
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

static const struct file_operations bound_fops = {
	.owner = THIS_MODULE,
	.read = bound_read,
	.llseek = default_llseek,
};

static const struct file_operations info_fops = {
	.owner = THIS_MODULE,
	.read = info_read,
	.llseek = default_llseek,
};

static int __init standin_init(void)
{
	int rc;

	rc = misc_register(&standin_misc);
	if (rc)
		return rc;
	INIT_LIST_HEAD(&standin_ictx.objects);
	standin_dir = debugfs_create_dir("tsm_standin", NULL);
	debugfs_create_file("ctl", 0200, standin_dir, NULL, &ctl_fops);
	debugfs_create_file("last", 0444, standin_dir, NULL, &last_fops);
	debugfs_create_file("bound", 0444, standin_dir, NULL, &bound_fops);
	debugfs_create_file("info", 0444, standin_dir, NULL, &info_fops);
	scnprintf(last_buf, REC_SIZE, "seq=0 cmd=none rc=0 err=0\n");
	pr_info("tsm_standin: loaded (pci_tsm=%s)\n",
		STANDIN_HAVE_REAL_PCI_TSM ? "real" : "standin");
	return 0;
}

static void __exit standin_exit(void)
{
	struct standin_vdev *sv, *svn;
	struct standin_tdi *tdi, *tn;
	struct standin_vm *vm, *vn;

	debugfs_remove_recursive(standin_dir);
	mutex_lock(&standin_lock);
	list_for_each_entry_safe(sv, svn, &standin_vdevs, node) {
		list_del(&sv->node);
		pci_dev_put(sv->pdev);
		kfree(sv);
	}
	list_for_each_entry_safe(tdi, tn, &standin_tdis, node) {
		list_del(&tdi->node);
		pci_dev_put(tdi->pdev);
		kfree(tdi);
	}
	list_for_each_entry_safe(vm, vn, &standin_vms, node) {
		list_del(&vm->node);
		fput(vm->filp);
		kfree(vm->kvm);
		kfree(vm);
	}
	mutex_unlock(&standin_lock);
	misc_deregister(&standin_misc);
}

module_init(standin_init);
module_exit(standin_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tsm-trace test fixture: stand-in for the iommufd/TSM bind path");
