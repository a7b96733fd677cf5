/* SPDX-License-Identifier: GPL-2.0 */
/*
 * standin.h - private header of the tsm_standin fixture (tsm_standin.ko, built from the
 * standin_*.c files: see standin_main.c for what the module is and how it is driven).
 *
 * The module's layers, one file each:
 *   standin_iommufd.c  the patch's ioctl and vDevice teardown (iommufd)
 *   standin_tsm.c      tsm-core (tsm_bind/tsm_unbind), the PCI TSM layer, the TSM driver
 *   standin_req.c      the guest-request path of v5 onwards (tsm_standin_gen.h)
 *   standin_kvm.c      the stand-in KVM VMs
 *   standin_cmds.c     the ctl commands on vDevices and devices
 *   standin_storm.c    storm and parallel: many calls from one command
 *   standin_ctl.c      the ctl command parser
 *   standin_main.c     module state, ground-truth record, debugfs files, init/exit
 *
 * Functions shared between the files are global (the probe targets always were); the ones
 * that are not probe targets carry a standin_ prefix so they never shadow a kernel symbol.
 */
#ifndef STANDIN_H
#define STANDIN_H

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

/* ---- Module state (everything runs under standin_lock; defined in standin_main.c) ---- */

extern struct mutex standin_lock;
extern struct iommufd_ctx standin_ictx;
extern struct miscdevice standin_misc;

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

extern struct list_head standin_vms;
extern struct list_head standin_vdevs;
extern struct list_head standin_tdis;

/* Knobs the ctl commands set (defined with the layer that uses them). */
extern int standin_inject_driver_errno;		/* standin_tsm.c */
extern unsigned int standin_inject_driver_count;
extern unsigned long standin_bind_delay_us;
extern bool standin_realpci;
extern unsigned int standin_inject_respond_count;	/* standin_iommufd.c */
/* respond_delay_us: the ioctl sleeps before responding (the binding already made). */
extern unsigned long standin_respond_delay_us;
/* Cleared by vdev_destroy nounbind: iommufd_vdevice_abort() skips tsm_unbind(). */
extern bool standin_abort_unbind;

/* ---- Ground-truth record of the current/last command (standin_main.c) ---- */

__printf(1, 2) void standin_rec(const char *fmt, ...);
#define rec(...) standin_rec(__VA_ARGS__)
/* Empties the current command's record. */
void standin_rec_reset(void);
long standin_fail(const char *fn, const char *layer, long rc);
#define FAIL(layer, rc) standin_fail(__func__, layer, rc)
void standin_rec_kvm(const char *prefix, struct kvm *kvm);

/* ---- Shared helpers ---- */

struct standin_vm *standin_find_vm(unsigned int id);		/* standin_kvm.c */
void standin_vm_put(struct standin_vm *vm);
struct standin_tdi *standin_find_tdi(struct pci_dev *pdev);	/* standin_tsm.c */
struct iommufd_object *standin_get_object(struct iommufd_ctx *ictx, u32 id,
					  enum iommufd_object_type type);	/* standin_iommufd.c */
void standin_put_object(struct iommufd_ctx *ictx, struct iommufd_object *obj);
struct standin_vdev *standin_find_vdev(unsigned int id);	/* standin_cmds.c */
int standin_lookup_dev(const char *name, struct device **dev, struct pci_dev **pdev);
void standin_rec_binding(struct pci_dev *pdev);

/* ---- The ctl commands (standin_ctl.c parses them) ---- */

int standin_run_cmd(char **argv, int argc, const char __user *ubuf);
int standin_cmd_vm_create(unsigned int id);			/* standin_kvm.c */
int standin_cmd_vm_destroy(unsigned int id);
int standin_cmd_disconnect(const char *devname);		/* standin_tsm.c */
int standin_cmd_tsm_req(u32 vdev_id, u32 scope_or_op, u32 req_len, u64 resp_len);
								/* standin_req.c */
int standin_cmd_vdev_create(unsigned int id, const char *devname,	/* standin_cmds.c */
			    const char *vmname, u64 virt_id);
int standin_cmd_ioctl(unsigned int vdev_id, u32 op, u32 flags, const char __user *ubuf);
int standin_cmd_vdev_destroy(unsigned int id, bool unbind);
int standin_cmd_tsm_bind(const char *devname, const char *vmname, u64 tdi_id);
int standin_cmd_tsm_unbind(const char *devname);
int standin_cmd_guest_req(const char *devname, u32 scope, u32 in_len, u32 out_len);
int standin_cmd_storm(unsigned int vdev_id, u32 n, u32 gap_us, const char __user *ubuf);	/* standin_storm.c */
int standin_cmd_parallel(unsigned int vdev_id, u32 n);

#endif /* STANDIN_H */
