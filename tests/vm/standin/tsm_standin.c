// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_standin - test fixture for tsm-trace.
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
 *   storm <vdev> <n>                        n bind+unbind pairs in one write (in-kernel loop)
 *   parallel <vdev> <n>                     n kernel threads call the driver's bind op
 *                                           (standin_tdi_bind, with delay_us) at once;
 *                                           records n started returned ok duration_ns
 *   tsm_req <vdev_id> <scope|op> <req_len> <resp_len>
 *                                           v5 onwards (tsm_standin_req.h):
 *                                           IOMMU_VDEVICE_TSM_REQ through
 *                                           tsm_guest_req() to the real
 *                                           pci_tsm_guest_req() (7.x); v2:
 *                                           -EOPNOTSUPP
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
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/debugfs.h>
#include <linux/pci.h>
#include <linux/miscdevice.h>
#include <linux/slab.h>
#include <linux/delay.h>
#include <linux/ktime.h>
#include <linux/mutex.h>
#include <linux/refcount.h>
#include <linux/uaccess.h>
#include <linux/err.h>
#include <linux/sched.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/anon_inodes.h>
#include <linux/list.h>
#include <linux/string.h>
#include <linux/kthread.h>
#include <linux/completion.h>
#include <linux/spinlock.h>
#include <linux/sockptr.h>

struct kvm;

#if IS_ENABLED(CONFIG_PCI_TSM)
#define STANDIN_HAVE_REAL_PCI_TSM 1
#define STANDIN_PCI_BIND standin_pci_tsm_bind
#define STANDIN_PCI_UNBIND standin_pci_tsm_unbind
/* Upstream (linux/pci-tsm.h); declared here to keep the include list flat. */
int pci_tsm_bind(struct pci_dev *pdev, struct kvm *kvm, u32 tdi_id);
void pci_tsm_unbind(struct pci_dev *pdev);
#include <linux/pci-tsm.h>	/* pci_tsm_guest_req(), enum pci_tsm_req_scope */
#include <linux/sockptr.h>
#else
#define STANDIN_HAVE_REAL_PCI_TSM 0
#define STANDIN_PCI_BIND pci_tsm_bind
#define STANDIN_PCI_UNBIND pci_tsm_unbind
#endif
#define STR_(x) #x
#define STR(x) STR_(x)

/* The UAPI and everything else that differs between generations of the series. */
#include "tsm_standin_gen.h"

/* ---- Copies of the patch's types (names and layouts as in the patch) ---- */

enum iommufd_object_type {
	IOMMUFD_OBJ_NONE,
	IOMMUFD_OBJ_ANY = IOMMUFD_OBJ_NONE,
	IOMMUFD_OBJ_DEVICE,
	IOMMUFD_OBJ_HWPT_PAGING,
	IOMMUFD_OBJ_HWPT_NESTED,
	IOMMUFD_OBJ_IOAS,
	IOMMUFD_OBJ_ACCESS,
	IOMMUFD_OBJ_FAULT,
	IOMMUFD_OBJ_VIOMMU,
	IOMMUFD_OBJ_VDEVICE,
	IOMMUFD_OBJ_VEVENTQ,
	IOMMUFD_OBJ_HW_QUEUE,
	IOMMUFD_OBJ_MAX,
};

struct iommufd_object {
	refcount_t wait_cnt;
	refcount_t users;
	enum iommufd_object_type type;
	unsigned int id;
};

struct iommufd_ctx {
	struct file *file;
	struct list_head objects;
};

struct iommufd_ucmd {
	struct iommufd_ctx *ictx;
	void __user *ubuffer;
	u32 user_size;
	void *cmd;
	struct iommufd_object *new_obj;
};

struct iommufd_group;
struct iommufd_vdevice;

struct iommufd_device {
	struct iommufd_object obj;
	struct iommufd_ctx *ictx;
	struct iommufd_group *igroup;
	struct list_head group_item;
	/* always the physical device */
	struct device *dev;
	bool enforce_cache_coherency;
	struct iommufd_vdevice *vdev;
	bool destroying;
};

struct iommufd_viommu {
	struct iommufd_object obj;
	struct iommufd_ctx *ictx;
	void *iommu_dev;
	void *hwpt;
	const void *ops;
	/* patch 1/3: the vIOMMU holds the VM's KVM file (kvm_filp; v5: kvm_file) */
	struct file *STANDIN_VIOMMU_KVM;
	unsigned int type;
};

struct iommufd_vdevice {
	struct iommufd_object obj;
	struct iommufd_viommu *viommu;
	struct iommufd_device *idev;
	u64 virt_id;
	void (*destroy)(struct iommufd_vdevice *vdev);
};


#define KVM_STATS_NAME_SIZE 48

/* Stand-in: leading members so the interesting fields have non-zero offsets. */
struct kvm {
	spinlock_t mmu_lock;
	struct mutex slots_lock;
	struct mm_struct *mm;
	unsigned long nr_memslot_pages;
	void *memslots[2];
	refcount_t users_count;
	pid_t userspace_pid;
	char stats_id[KVM_STATS_NAME_SIZE];
	bool vm_dead;
};

/* ---- Prototypes of everything exported (probe targets) ---- */

int iommufd_vdevice_tsm_op_ioctl(struct iommufd_ucmd *ucmd);
int tsm_bind(struct device *dev, struct kvm *kvm, u64 tdi_id);
int tsm_unbind(struct device *dev);
void iommufd_vdevice_abort(struct iommufd_object *obj);
int STANDIN_PCI_BIND(struct pci_dev *pdev, struct kvm *kvm, u32 tdi_id);
void STANDIN_PCI_UNBIND(struct pci_dev *pdev);
void *standin_tdi_bind(struct pci_dev *pdev, struct kvm *kvm, u32 tdi_id);
void standin_tdi_unbind(struct pci_dev *pdev);
void kvm_destroy_vm(struct kvm *kvm);

/* ---- Module state (everything runs under standin_lock) ---- */

static DEFINE_MUTEX(standin_lock);
static struct dentry *standin_dir;
static struct iommufd_ctx standin_ictx;

struct standin_vm {
	struct list_head node;
	unsigned int id;
	struct kvm *kvm;
	struct file *filp;	/* anon "kvm-vm" file, private_data = kvm */
	refcount_t refs;	/* handle + one per vDevice */
	bool handle_dropped;
};

struct standin_vdev {
	struct list_head node;
	struct iommufd_vdevice vdev;
	struct iommufd_viommu viommu;
	struct iommufd_device idev;
	struct pci_dev *pdev;	/* NULL for nonpci */
	struct standin_vm *vm;	/* NULL for nokvm */
};

/* PCI-layer state of one device (pdev->tsm->tdi upstream). */
struct standin_tdi {
	struct list_head node;
	struct pci_dev *pdev;
	struct kvm *kvm;
	u32 tdi_id;
};

static LIST_HEAD(standin_vms);
static LIST_HEAD(standin_vdevs);
static LIST_HEAD(standin_tdis);

static int inject_driver_errno;
static unsigned int inject_driver_count;
static unsigned int inject_respond_count;
/* respond_delay_us: the ioctl sleeps before responding (the binding already made). */
static unsigned long respond_delay_us;
static unsigned long bind_delay_us;
static bool realpci;
static u64 standin_seq;
static int standin_last_driver_rc;

static struct miscdevice standin_misc = {
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

static __printf(1, 2) void rec(const char *fmt, ...)
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

/*
 * Records where the current command's error was born (the first failure wins:
 * errors propagate outwards, so the innermost function records first) and
 * returns rc unchanged.
 */
static bool fail_recorded;

static long standin_fail(const char *fn, const char *layer, long rc)
{
	if (rc < 0 && !fail_recorded) {
		fail_recorded = true;
		rec("fail_fn=%s fail_layer=%s fail_err=%pe", fn, layer,
		    ERR_PTR(rc));
	}
	return rc;
}

#define FAIL(layer, rc) standin_fail(__func__, layer, rc)

static void rec_kvm(const char *prefix, struct kvm *kvm)
{
	if (!kvm) {
		rec("%skvm=0x0", prefix);
		return;
	}
	rec("%skvm=0x%px %skvm_pid=%d %sstats_id=%s", prefix, kvm, prefix,
	    kvm->userspace_pid, prefix, kvm->stats_id);
}

/* ---- Stand-in KVM ---- */

static int standin_kvm_release(struct inode *inode, struct file *filp)
{
	return 0;
}

static const struct file_operations standin_kvm_fops = {
	.owner = THIS_MODULE,
	.release = standin_kvm_release,
	.llseek = noop_llseek,
};

noinline void kvm_destroy_vm(struct kvm *kvm)
{
	rec("destroyed_kvm=0x%px destroyed_kvm_pid=%d", kvm, kvm->userspace_pid);
	kvm->vm_dead = true;
	kfree(kvm);
}
EXPORT_SYMBOL_GPL(kvm_destroy_vm);

static struct standin_vm *find_vm(unsigned int id)
{
	struct standin_vm *vm;

	list_for_each_entry(vm, &standin_vms, node)
		if (vm->id == id && !vm->handle_dropped)
			return vm;
	return NULL;
}

static void vm_put(struct standin_vm *vm)
{
	struct file *filp;

	if (!refcount_dec_and_test(&vm->refs)) {
		rec("destroyed=0");
		return;
	}
	list_del(&vm->node);
	filp = vm->filp;
	filp->private_data = NULL;
	kvm_destroy_vm(vm->kvm);
	rec("destroyed=1");
	fput(filp);
	kfree(vm);
}

static int cmd_vm_create(unsigned int id)
{
	struct standin_vm *vm;
	struct kvm *kvm;

	rec("vm=%u", id);
	if (find_vm(id))
		return -EEXIST;
	vm = kzalloc(sizeof(*vm), GFP_KERNEL);
	kvm = kzalloc(sizeof(*kvm), GFP_KERNEL);
	if (!vm || !kvm) {
		kfree(vm);
		kfree(kvm);
		return -ENOMEM;
	}
	spin_lock_init(&kvm->mmu_lock);
	mutex_init(&kvm->slots_lock);
	refcount_set(&kvm->users_count, 1);
	kvm->userspace_pid = task_tgid_nr(current);
	snprintf(kvm->stats_id, sizeof(kvm->stats_id), "kvm-%d",
		 kvm->userspace_pid);
	vm->filp = anon_inode_getfile("kvm-vm", &standin_kvm_fops, kvm, O_RDWR);
	if (IS_ERR(vm->filp)) {
		int rc = PTR_ERR(vm->filp);

		kfree(vm);
		kfree(kvm);
		return rc;
	}
	vm->id = id;
	vm->kvm = kvm;
	refcount_set(&vm->refs, 1);
	list_add_tail(&vm->node, &standin_vms);
	rec_kvm("", kvm);
	return 0;
}

static int cmd_vm_destroy(unsigned int id)
{
	struct standin_vm *vm = find_vm(id);

	rec("vm=%u", id);
	if (!vm)
		return -ENOENT;
	rec_kvm("", vm->kvm);
	vm->handle_dropped = true;
	vm_put(vm);
	return 0;
}

/* ---- TSM driver layer ---- */

noinline void *standin_tdi_bind(struct pci_dev *pdev, struct kvm *kvm,
				u32 tdi_id)
{
	ktime_t start = ktime_get();
	struct standin_tdi *tdi;
	void *ret;

	if (bind_delay_us) {
		if (bind_delay_us >= 20000)
			msleep(DIV_ROUND_UP(bind_delay_us, 1000));
		else
			usleep_range(bind_delay_us, bind_delay_us + 50);
	}
	if (inject_driver_count) {
		inject_driver_count--;
		ret = ERR_PTR(FAIL("tsm_driver", -inject_driver_errno));
	} else {
		tdi = kzalloc(sizeof(*tdi), GFP_KERNEL);
		if (tdi) {
			tdi->pdev = pdev;
			tdi->kvm = kvm;
			tdi->tdi_id = tdi_id;
		}
		ret = tdi ? (void *)tdi : ERR_PTR(FAIL("tsm_driver", -ENOMEM));
	}
	standin_last_driver_rc = IS_ERR(ret) ? PTR_ERR(ret) : 0;
	rec("driver_called=1 driver_rc=%d driver_ns=%lld",
	    standin_last_driver_rc, ktime_to_ns(ktime_sub(ktime_get(), start)));
	return ret;
}
EXPORT_SYMBOL_GPL(standin_tdi_bind);

static struct standin_tdi *find_tdi(struct pci_dev *pdev)
{
	struct standin_tdi *tdi;

	list_for_each_entry(tdi, &standin_tdis, node)
		if (tdi->pdev == pdev)
			return tdi;
	return NULL;
}

noinline void standin_tdi_unbind(struct pci_dev *pdev)
{
	struct standin_tdi *tdi = find_tdi(pdev);

	rec("driver_unbind=1");
	if (!tdi)
		return;
	list_del(&tdi->node);
	pci_dev_put(tdi->pdev);
	kfree(tdi);
}
EXPORT_SYMBOL_GPL(standin_tdi_unbind);

/* ---- PCI TSM layer (upstream semantics of pci_tsm_bind/unbind) ---- */

noinline int STANDIN_PCI_BIND(struct pci_dev *pdev, struct kvm *kvm, u32 tdi_id)
{
	struct standin_tdi *cur;
	void *tdi;

	rec("layer=%s", STR(STANDIN_PCI_BIND));
	if (!kvm)
		return FAIL("pci_tsm", -EINVAL);
	/* Resolve races to bind a TDI */
	cur = find_tdi(pdev);
	if (cur) {
		rec_kvm("bound_", cur->kvm);
		if (cur->kvm != kvm)
			return FAIL("pci_tsm", -EBUSY);
		return 0;
	}
	tdi = standin_tdi_bind(pdev, kvm, tdi_id);
	if (IS_ERR(tdi))
		return PTR_ERR(tdi);
	pci_dev_get(pdev);
	list_add_tail(&((struct standin_tdi *)tdi)->node, &standin_tdis);
	return 0;
}
EXPORT_SYMBOL_GPL(STANDIN_PCI_BIND);

/* Like upstream's static __pci_tsm_unbind(): not a probe target by name. */
static noinline void __standin_pci_tsm_unbind(struct pci_dev *pdev)
{
	if (find_tdi(pdev))
		standin_tdi_unbind(pdev);
}

noinline void STANDIN_PCI_UNBIND(struct pci_dev *pdev)
{
	rec("layer=%s", STR(STANDIN_PCI_UNBIND));
	__standin_pci_tsm_unbind(pdev);
}
EXPORT_SYMBOL_GPL(STANDIN_PCI_UNBIND);

/* ---- tsm-core (the patch's tsm_bind/tsm_unbind) ---- */

noinline int tsm_bind(struct device *dev, struct kvm *kvm, u64 tdi_id)
{
	if (!dev_is_pci(dev))
		return FAIL("tsm_core", -EINVAL);

#if STANDIN_HAVE_REAL_PCI_TSM
	if (realpci) {
		rec("layer=pci_tsm_bind");
		return standin_fail("pci_tsm_bind", "pci_tsm",
				    pci_tsm_bind(to_pci_dev(dev), kvm, tdi_id));
	}
#endif
	return STANDIN_PCI_BIND(to_pci_dev(dev), kvm, tdi_id);
}
EXPORT_SYMBOL_GPL(tsm_bind);

noinline int tsm_unbind(struct device *dev)
{
	if (!dev_is_pci(dev))
		return FAIL("tsm_core", -EINVAL);

#if STANDIN_HAVE_REAL_PCI_TSM
	if (realpci) {
		rec("layer=pci_tsm_unbind");
		pci_tsm_unbind(to_pci_dev(dev));
		return 0;
	}
#endif
	STANDIN_PCI_UNBIND(to_pci_dev(dev));
	return 0;
}
EXPORT_SYMBOL_GPL(tsm_unbind);

/* ---- iommufd (the patch's ioctl and vDevice teardown) ---- */

static struct iommufd_object *standin_get_object(struct iommufd_ctx *ictx,
						 u32 id,
						 enum iommufd_object_type type)
{
	struct standin_vdev *sv;

	list_for_each_entry(sv, &standin_vdevs, node) {
		if (sv->vdev.obj.id == id && sv->vdev.obj.type == type &&
		    sv->idev.ictx == ictx) {
			refcount_inc(&sv->vdev.obj.users);
			return &sv->vdev.obj;
		}
	}
	return ERR_PTR(-ENOENT);
}

static void standin_put_object(struct iommufd_ctx *ictx,
			       struct iommufd_object *obj)
{
	refcount_dec(&obj->users);
}

/* iommufd_ucmd_respond(): copy_to_user of the command; injectable -EFAULT. */
static noinline int standin_ucmd_respond(struct iommufd_ucmd *ucmd,
					 size_t cmd_len)
{
	if (respond_delay_us)
		msleep(DIV_ROUND_UP(respond_delay_us, 1000));
	if (inject_respond_count) {
		inject_respond_count--;
		rec("respond_rc=%d", -EFAULT);
		return FAIL("iommufd", -EFAULT);
	}
	rec("respond_rc=0");
	return 0;
}

noinline int iommufd_vdevice_tsm_op_ioctl(struct iommufd_ucmd *ucmd)
{
	int rc;
	struct kvm *kvm;
	struct iommufd_vdevice *vdev;
	struct iommu_vdevice_tsm_op *cmd = ucmd->cmd;
	struct iommufd_object *obj;

	if (cmd->flags)
		return FAIL("iommufd", -EOPNOTSUPP);

	obj = standin_get_object(ucmd->ictx, cmd->vdevice_id,
				 IOMMUFD_OBJ_VDEVICE);
	if (IS_ERR(obj))
		return FAIL("iommufd", PTR_ERR(obj));
	vdev = container_of(obj, struct iommufd_vdevice, obj);
	rec("obj_id=%u virt_id=%llu dev=%s", vdev->obj.id, vdev->virt_id,
	    dev_name(vdev->idev->dev));

	if (!vdev->viommu->STANDIN_VIOMMU_KVM) {
		rc = FAIL("iommufd", -ENODEV);
		goto out_put_vdev;
	}

	kvm = vdev->viommu->STANDIN_VIOMMU_KVM->private_data;
	if (!kvm) {
		rc = FAIL("iommufd", -ENODEV);
		goto out_put_vdev;
	}
	rec_kvm("", kvm);

	/* tsm layer will take care of parallel calls to tsm_bind/unbind */
	switch (STANDIN_CMD_OP(cmd)) {
	case IOMMU_VDEVICE_TSM_BIND:
		rec("tdi_id=%u", (u32)vdev->virt_id);
		rc = tsm_bind(vdev->idev->dev, kvm, vdev->virt_id);
		break;
	case IOMMU_VDEVICE_TSM_UNBIND:
		rc = tsm_unbind(vdev->idev->dev);
		break;
	default:
		rc = FAIL("iommufd", -EINVAL);
		goto out_put_vdev;
	}

	if (rc)
		goto out_put_vdev;

	rc = standin_ucmd_respond(ucmd, sizeof(*cmd));

out_put_vdev:
	standin_put_object(ucmd->ictx, &vdev->obj);
	return rc;
}
EXPORT_SYMBOL_GPL(iommufd_vdevice_tsm_op_ioctl);

static bool standin_abort_unbind = true;

noinline void iommufd_vdevice_abort(struct iommufd_object *obj)
{
	struct iommufd_vdevice *vdev =
		container_of(obj, struct iommufd_vdevice, obj);
	struct iommufd_device *idev = vdev->idev;

	if (standin_abort_unbind)
		tsm_unbind(idev->dev);

	if (vdev->destroy)
		vdev->destroy(vdev);
	idev->vdev = NULL;
}
EXPORT_SYMBOL_GPL(iommufd_vdevice_abort);

/* The guest-request ioctl and tsm_guest_req() of v5 onwards. */
#include "tsm_standin_req.h"

/* ---- Commands ---- */

static struct standin_vdev *find_vdev(unsigned int id)
{
	struct standin_vdev *sv;

	list_for_each_entry(sv, &standin_vdevs, node)
		if (sv->vdev.obj.id == id)
			return sv;
	return NULL;
}

/* "nonpci" or a BDF ("0000:00:02.0" or "00:02.0"); takes a reference. */
static int lookup_dev(const char *name, struct device **dev,
		      struct pci_dev **pdev)
{
	unsigned int domain = 0, bus, slot, fn;

	*pdev = NULL;
	if (!strcmp(name, "nonpci")) {
		*dev = standin_misc.this_device;
		return 0;
	}
	if (sscanf(name, "%x:%x:%x.%x", &domain, &bus, &slot, &fn) != 4) {
		domain = 0;
		if (sscanf(name, "%x:%x.%x", &bus, &slot, &fn) != 3)
			return -EINVAL;
	}
	if (bus > 255 || slot > 31 || fn > 7)
		return -EINVAL;
	*pdev = pci_get_domain_bus_and_slot(domain, bus, PCI_DEVFN(slot, fn));
	if (!*pdev)
		return -ENODEV;
	*dev = &(*pdev)->dev;
	return 0;
}

static int cmd_vdev_create(unsigned int id, const char *devname,
			   const char *vmname, u64 virt_id)
{
	struct standin_vm *vm = NULL;
	struct standin_vdev *sv;
	struct pci_dev *pdev;
	struct device *dev;
	unsigned int vm_id;
	int rc;

	rec("vdevice_id=%u virt_id=%llu", id, virt_id);
	if (find_vdev(id))
		return -EEXIST;
	if (strcmp(vmname, "nokvm")) {
		if (kstrtouint(vmname, 0, &vm_id))
			return -EINVAL;
		vm = find_vm(vm_id);
		if (!vm)
			return -ENOENT;
	}
	rc = lookup_dev(devname, &dev, &pdev);
	if (rc)
		return rc;
	sv = kzalloc(sizeof(*sv), GFP_KERNEL);
	if (!sv) {
		pci_dev_put(pdev);
		return -ENOMEM;
	}
	sv->pdev = pdev;
	sv->vm = vm;
	if (vm)
		refcount_inc(&vm->refs);

	refcount_set(&sv->idev.obj.users, 1);
	sv->idev.obj.type = IOMMUFD_OBJ_DEVICE;
	sv->idev.obj.id = 0x10000 + id;
	sv->idev.ictx = &standin_ictx;
	INIT_LIST_HEAD(&sv->idev.group_item);
	sv->idev.dev = dev;
	sv->idev.vdev = &sv->vdev;

	refcount_set(&sv->viommu.obj.users, 1);
	sv->viommu.obj.type = IOMMUFD_OBJ_VIOMMU;
	sv->viommu.obj.id = 0x20000 + id;
	sv->viommu.ictx = &standin_ictx;
	sv->viommu.STANDIN_VIOMMU_KVM = vm ? vm->filp : NULL;

	refcount_set(&sv->vdev.obj.users, 1);
	sv->vdev.obj.type = IOMMUFD_OBJ_VDEVICE;
	sv->vdev.obj.id = id;
	sv->vdev.viommu = &sv->viommu;
	sv->vdev.idev = &sv->idev;
	sv->vdev.virt_id = virt_id;

	list_add_tail(&sv->node, &standin_vdevs);
	rec("dev=%s", dev_name(dev));
	rec_kvm("", vm ? vm->kvm : NULL);
	return 0;
}

static void rec_binding(struct pci_dev *pdev)
{
	struct standin_tdi *tdi = pdev ? find_tdi(pdev) : NULL;

#if STANDIN_HAVE_REAL_PCI_TSM
	if (realpci && pdev) {
		/*
		 * The real core's binding (pdev->tsm->tdi; unlocked read, fine
		 * for sequential tests). Only this module's VMs are dereferenced.
		 */
		struct pci_tsm *t = READ_ONCE(pdev->tsm);
		struct pci_tdi *rt = t ? READ_ONCE(t->tdi) : NULL;
		struct standin_vm *vm;

		if (!rt) {
			rec("after_kvm=0x0");
			return;
		}
		list_for_each_entry(vm, &standin_vms, node) {
			if (vm->kvm == rt->kvm) {
				rec_kvm("after_", rt->kvm);
				return;
			}
		}
		rec("after_kvm=0x%px", rt->kvm);
		return;
	}
#endif

	if (tdi)
		rec_kvm("after_", tdi->kvm);
	else
		rec("after_kvm=0x0");
}

static int cmd_ioctl(unsigned int vdev_id, u32 op, u32 flags,
		     const char __user *ubuf)
{
	struct iommu_vdevice_tsm_op cmd = {
		.size = sizeof(cmd),
		.flags = flags,
		.vdevice_id = vdev_id,
	};
	struct iommufd_ucmd ucmd = {
		.ictx = &standin_ictx,
		.ubuffer = (void __user *)ubuf,
		.user_size = sizeof(cmd),
		.cmd = &cmd,
	};
	ktime_t start;
	int rc;

	struct standin_vdev *sv;

	STANDIN_SET_CMD_OP(&cmd, op);
	rec("op=%u flags=%u vdevice_id=%u", op, flags, vdev_id);
	start = ktime_get();
	rc = iommufd_vdevice_tsm_op_ioctl(&ucmd);
	rec("duration_ns=%lld", ktime_to_ns(ktime_sub(ktime_get(), start)));
	sv = find_vdev(vdev_id);
	if (sv && sv->pdev)
		rec_binding(sv->pdev);
	return rc;
}

/*
 * storm <vdev> <n>: n bind+unbind pairs back to back from inside the kernel (one write), the
 * same path as the ioctl; records how many of each succeeded or failed (and with what).
 */
static int cmd_storm(unsigned int vdev_id, u32 n, const char __user *ubuf)
{
	struct iommu_vdevice_tsm_op cmd = {
		.size = sizeof(cmd),
		.vdevice_id = vdev_id,
	};
	struct iommufd_ucmd ucmd = {
		.ictx = &standin_ictx,
		.ubuffer = (void __user *)ubuf,
		.user_size = sizeof(cmd),
		.cmd = &cmd,
	};
	u32 i, bind_ok = 0, bind_err = 0, unbind_ok = 0, unbind_err = 0;
	int last_bind_rc = 0, last_unbind_rc = 0;
	ktime_t start = ktime_get();

	for (i = 0; i < n; i++) {
		int rc;

		STANDIN_SET_CMD_OP(&cmd, IOMMU_VDEVICE_TSM_BIND);
		rc = iommufd_vdevice_tsm_op_ioctl(&ucmd);
		if (rc) {
			bind_err++;
			last_bind_rc = rc;
		} else {
			bind_ok++;
		}
		STANDIN_SET_CMD_OP(&cmd, IOMMU_VDEVICE_TSM_UNBIND);
		rc = iommufd_vdevice_tsm_op_ioctl(&ucmd);
		if (rc) {
			unbind_err++;
			last_unbind_rc = rc;
		} else {
			unbind_ok++;
		}
		cond_resched();
	}
	/* Only the tally: the calls' own records would overflow the buffer. */
	rec_len = 0;
	rec_buf[0] = '\0';
	rec("n=%u bind_ok=%u bind_err=%u unbind_ok=%u unbind_err=%u bind_rc=%d unbind_rc=%d duration_ns=%lld",
	    n, bind_ok, bind_err, unbind_ok, unbind_err, last_bind_rc,
	    last_unbind_rc, ktime_to_ns(ktime_sub(ktime_get(), start)));
	return 0;
}

/*
 * parallel <vdev> <n>: n kernel threads call the driver's bind op at the same moment (each
 * sleeps delay_us inside it), so n calls are in flight at once: more than a kretprobe's
 * default maxactive (max(10, 2 * CPUs)). The threads exit when their call returns. Records
 * how many started, returned and succeeded: the calls really made, whatever a probe saw.
 */
struct parallel_run {
	struct pci_dev *pdev;
	struct kvm *kvm;
	struct completion go;
	struct completion all_done;
	atomic_t left;
	atomic_t returned;
	atomic_t ok;
};

static int parallel_thread(void *data)
{
	struct parallel_run *run = data;
	void *tdi;

	wait_for_completion(&run->go);
	tdi = standin_tdi_bind(run->pdev, run->kvm, 0);
	atomic_inc(&run->returned);
	if (!IS_ERR(tdi)) {
		atomic_inc(&run->ok);
		kfree(tdi);
	}
	if (atomic_dec_and_test(&run->left))
		complete(&run->all_done);
	return 0;
}

static int cmd_parallel(unsigned int vdev_id, u32 n)
{
	struct standin_vdev *sv = find_vdev(vdev_id);
	struct parallel_run *run;
	ktime_t start;
	u32 i, started = 0;

	if (!sv || !sv->pdev || !sv->vm || n == 0 || n > 1024)
		return -EINVAL;
	run = kzalloc(sizeof(*run), GFP_KERNEL);
	if (!run)
		return -ENOMEM;
	run->pdev = sv->pdev;
	run->kvm = sv->vm->kvm;
	init_completion(&run->go);
	init_completion(&run->all_done);
	atomic_set(&run->left, n);
	for (i = 0; i < n; i++) {
		struct task_struct *t = kthread_run(parallel_thread, run,
						    "standin_par/%u", i);
		if (IS_ERR(t))
			break;
		started++;
	}
	/* Threads never started count as done. */
	if (started < n && atomic_sub_and_test(n - started, &run->left))
		complete(&run->all_done);
	start = ktime_get();
	complete_all(&run->go);
	if (started)
		wait_for_completion(&run->all_done);
	/* Only the tally: the calls' own records would overflow the buffer. */
	rec_len = 0;
	rec_buf[0] = '\0';
	rec("n=%u started=%u returned=%d ok=%d delay_us=%lu duration_ns=%lld", n,
	    started, atomic_read(&run->returned), atomic_read(&run->ok),
	    bind_delay_us, ktime_to_ns(ktime_sub(ktime_get(), start)));
	kfree(run);
	return 0;
}

static int cmd_vdev_destroy(unsigned int id, bool unbind)
{
	struct standin_vdev *sv = find_vdev(id);
	ktime_t start;

	rec("vdevice_id=%u unbind=%d", id, unbind);
	if (!sv)
		return -ENOENT;
	rec("dev=%s", dev_name(sv->idev.dev));
	list_del(&sv->node);
	standin_abort_unbind = unbind;
	start = ktime_get();
	iommufd_vdevice_abort(&sv->vdev.obj);
	rec("duration_ns=%lld", ktime_to_ns(ktime_sub(ktime_get(), start)));
	standin_abort_unbind = true;
	rec_binding(sv->pdev);
	if (sv->vm)
		vm_put(sv->vm);
	pci_dev_put(sv->pdev);
	kfree(sv);
	return 0;
}

/*
 * tsm_bind(nonpci, <poisoned struct kvm *>, tdi_id): tsm_bind() rejects a
 * non-PCI device before it looks at the VM, so nothing dereferences the
 * pointer but a probe, whose reads of it fault (a non-canonical address:
 * copy_from_kernel_nofault() refuses it, no oops). Only for the non-PCI device.
 */
#define STANDIN_BAD_KVM ((struct kvm *)0xdead000000000000UL)
static int cmd_tsm_bind_badkvm(const char *devname, u64 tdi_id)
{
	struct pci_dev *pdev;
	struct device *dev;
	int rc;

	rc = lookup_dev(devname, &dev, &pdev);
	if (rc)
		return rc;
	if (pdev) {
		pci_dev_put(pdev);
		return -EINVAL;
	}
	rec("dev=%s tdi_id=%llu kvm=bad", dev_name(dev), tdi_id);
	return tsm_bind(dev, STANDIN_BAD_KVM, tdi_id);
}

static int cmd_tsm_bind(const char *devname, const char *vmname, u64 tdi_id)
{
	struct standin_vm *vm;
	struct pci_dev *pdev;
	struct device *dev;
	unsigned int vm_id;
	ktime_t start;
	int rc;

	if (!strcmp(vmname, "badkvm"))
		return cmd_tsm_bind_badkvm(devname, tdi_id);
	if (kstrtouint(vmname, 0, &vm_id))
		return -EINVAL;
	vm = find_vm(vm_id);
	if (!vm)
		return -ENOENT;
	rc = lookup_dev(devname, &dev, &pdev);
	if (rc)
		return rc;
	rec("dev=%s tdi_id=%llu", dev_name(dev), tdi_id);
	rec_kvm("", vm->kvm);
	start = ktime_get();
	rc = tsm_bind(dev, vm->kvm, tdi_id);
	rec("duration_ns=%lld", ktime_to_ns(ktime_sub(ktime_get(), start)));
	pci_dev_put(pdev);
	return rc;
}

static int cmd_tsm_unbind(const char *devname)
{
	struct pci_dev *pdev;
	struct device *dev;
	int rc;

	rc = lookup_dev(devname, &dev, &pdev);
	if (rc)
		return rc;
	rec("dev=%s", dev_name(dev));
	rc = tsm_unbind(dev);
	pci_dev_put(pdev);
	return rc;
}

static int cmd_disconnect(const char *devname)
{
	struct standin_tdi *tdi;
	struct pci_dev *pdev;
	struct device *dev;
	int rc;

	rc = lookup_dev(devname, &dev, &pdev);
	if (rc)
		return rc;
	rec("dev=%s", dev_name(dev));
	if (!pdev)
		return -EINVAL;
	tdi = find_tdi(pdev);
	if (tdi)
		rec_kvm("bound_", tdi->kvm);
	__standin_pci_tsm_unbind(pdev);
	pci_dev_put(pdev);
	return 0;
}

/* guest_req: the real pci_tsm_guest_req() (TDISP guest request) on a device. */
static int cmd_guest_req(const char *devname, u32 scope, u32 in_len,
			 u32 out_len)
{
#if STANDIN_HAVE_REAL_PCI_TSM
	struct pci_dev *pdev;
	struct device *dev;
	u8 *in, *out;
	u64 code = 0, out_sum = 0;
	char err[32] = "0";
	ktime_t start;
	ssize_t r;
	u32 i;
	int rc;

	if (in_len > PAGE_SIZE || out_len > PAGE_SIZE)
		return -E2BIG;
	rc = lookup_dev(devname, &dev, &pdev);
	if (rc)
		return rc;
	rec("dev=%s layer=pci_tsm_guest_req scope=%u in_len=%u out_len=%u",
	    dev_name(dev), scope, in_len, out_len);
	if (!pdev)
		return -EINVAL;
	in = kmalloc(PAGE_SIZE, GFP_KERNEL);
	out = kzalloc(PAGE_SIZE, GFP_KERNEL);
	if (!in || !out) {
		r = -ENOMEM;
		goto out;
	}
	for (i = 0; i < in_len; i++)
		in[i] = i & 0xff;
	start = ktime_get();
	r = pci_tsm_guest_req(pdev, scope, KERNEL_SOCKPTR(in), in_len,
			      KERNEL_SOCKPTR(out), out_len, &code);
	rec("duration_ns=%lld", ktime_to_ns(ktime_sub(ktime_get(), start)));
	for (i = 0; i < out_len; i++)
		out_sum += out[i];
	if (r < 0)
		snprintf(err, sizeof(err), "%pe", ERR_PTR(r));
	rec("guest_rc=%zd err=%s residue=%zd tsm_code=0x%llx out_sum=%llu", r,
	    err, r > 0 ? r : 0, code, out_sum);
out:
	kfree(in);
	kfree(out);
	pci_dev_put(pdev);
	return r < 0 ? r : 0;
#else
	return -EOPNOTSUPP;
#endif
}

#define MAX_ARGS 6

static int parse_u32(const char *s, u32 *v)
{
	return s ? kstrtou32(s, 0, v) : -EINVAL;
}

static int run_cmd(char **argv, int argc, const char __user *ubuf)
{
	const char *c = argv[0];
	u32 a, b, d;
	u64 v;
	int rc;

	if (!strcmp(c, "vm_create") && argc == 2) {
		rc = parse_u32(argv[1], &a);
		return rc ?: cmd_vm_create(a);
	}
	if (!strcmp(c, "vm_destroy") && argc == 2) {
		rc = parse_u32(argv[1], &a);
		return rc ?: cmd_vm_destroy(a);
	}
	if (!strcmp(c, "vdev_create") && argc == 5) {
		rc = parse_u32(argv[1], &a) ?: kstrtou64(argv[4], 0, &v);
		return rc ?: cmd_vdev_create(a, argv[2], argv[3], v);
	}
	if (!strcmp(c, "respond_delay_us") && argc == 2) {
		rc = parse_u32(argv[1], &a);
		if (rc)
			return rc;
		respond_delay_us = a;
		rec("respond_delay_us=%u", a);
		return 0;
	}
	if (!strcmp(c, "storm") && argc == 3) {
		rc = parse_u32(argv[1], &a) ?: parse_u32(argv[2], &b);
		return rc ?: cmd_storm(a, b, ubuf);
	}
	if (!strcmp(c, "parallel") && argc == 3) {
		rc = parse_u32(argv[1], &a) ?: parse_u32(argv[2], &b);
		return rc ?: cmd_parallel(a, b);
	}
	if (!strcmp(c, "ioctl") && argc == 4) {
		rc = parse_u32(argv[1], &a) ?: parse_u32(argv[2], &b) ?:
		     parse_u32(argv[3], &d);
		return rc ?: cmd_ioctl(a, b, d, ubuf);
	}
	if (!strcmp(c, "vdev_destroy") && (argc == 2 || argc == 3)) {
		if (argc == 3 && strcmp(argv[2], "nounbind"))
			return -EINVAL;
		rc = parse_u32(argv[1], &a);
		return rc ?: cmd_vdev_destroy(a, argc == 2);
	}
	if (!strcmp(c, "tsm_bind") && argc == 4) {
		rc = kstrtou64(argv[3], 0, &v);
		return rc ?: cmd_tsm_bind(argv[1], argv[2], v);
	}
	if (!strcmp(c, "tsm_unbind") && argc == 2)
		return cmd_tsm_unbind(argv[1]);
	if (!strcmp(c, "disconnect") && argc == 2)
		return cmd_disconnect(argv[1]);
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
			inject_driver_errno = e;
			inject_driver_count = b;
			rec("errno=%d count=%u", -e, b);
			return 0;
		}
		if (!strcmp(argv[1], "respond_efault") &&
		    (argc == 2 || argc == 3)) {
			b = 1;
			rc = argc == 3 ? parse_u32(argv[2], &b) : 0;
			if (rc)
				return rc;
			inject_respond_count = b;
			rec("count=%u", b);
			return 0;
		}
		if (!strcmp(argv[1], "clear") && argc == 2) {
			inject_driver_count = 0;
			inject_respond_count = 0;
			return 0;
		}
		return -EINVAL;
	}
	if (!strcmp(c, "delay_us") && argc == 2) {
		rc = parse_u32(argv[1], &a);
		if (rc)
			return rc;
		bind_delay_us = a;
		rec("delay_us=%u", a);
		return 0;
	}
	if (!strcmp(c, "guest_req") && argc == 5) {
		rc = parse_u32(argv[2], &a) ?: parse_u32(argv[3], &b) ?:
		     parse_u32(argv[4], &d);
		return rc ?: cmd_guest_req(argv[1], a, b, d);
	}
	if (!strcmp(c, "tsm_req") && argc == 5) {
		rc = parse_u32(argv[1], &a) ?: parse_u32(argv[2], &b) ?:
		     parse_u32(argv[3], &d) ?: kstrtou64(argv[4], 0, &v);
		return rc ?: cmd_tsm_req(a, b, d, v);
	}
	if (!strcmp(c, "realpci") && argc == 2) {
		rc = parse_u32(argv[1], &a);
		if (rc || a > 1)
			return -EINVAL;
		if (a && !STANDIN_HAVE_REAL_PCI_TSM)
			return -EOPNOTSUPP;
		realpci = a;
		rec("realpci=%u", a);
		return 0;
	}
	return -EINVAL;
}

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
	rec_len = 0;
	rec_buf[0] = '\0';
	fail_recorded = false;
	rc = run_cmd(argv, argc, ubuf);
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
			STR(STANDIN_PCI_BIND), STR(STANDIN_PCI_UNBIND), realpci,
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
