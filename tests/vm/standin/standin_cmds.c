// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_standin: the ctl commands on vDevices and devices (vdev_create, ioctl,
 * vdev_destroy, tsm_bind, tsm_unbind, guest_req) and the lookups they share.
 */
#include "standin.h"

/* ---- Commands ---- */

struct standin_vdev *standin_find_vdev(unsigned int id)
{
	struct standin_vdev *sv;

	list_for_each_entry(sv, &standin_vdevs, node)
		if (sv->vdev.obj.id == id)
			return sv;
	return NULL;
}

/* "nonpci" or a BDF ("0000:00:02.0" or "00:02.0"); takes a reference. */
int standin_lookup_dev(const char *name, struct device **dev,
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

int standin_cmd_vdev_create(unsigned int id, const char *devname,
			    const char *vmname, u64 virt_id)
{
	struct standin_vm *vm = NULL;
	struct standin_vdev *sv;
	struct pci_dev *pdev;
	struct device *dev;
	unsigned int vm_id;
	int rc;

	rec("vdevice_id=%u virt_id=%llu", id, virt_id);
	if (standin_find_vdev(id))
		return -EEXIST;
	if (strcmp(vmname, "nokvm")) {
		if (kstrtouint(vmname, 0, &vm_id))
			return -EINVAL;
		vm = standin_find_vm(vm_id);
		if (!vm)
			return -ENOENT;
	}
	rc = standin_lookup_dev(devname, &dev, &pdev);
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
	standin_rec_kvm("", vm ? vm->kvm : NULL);
	return 0;
}

void standin_rec_binding(struct pci_dev *pdev)
{
	struct standin_tdi *tdi = pdev ? standin_find_tdi(pdev) : NULL;

#if STANDIN_HAVE_REAL_PCI_TSM
	if (standin_realpci && pdev) {
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
				standin_rec_kvm("after_", rt->kvm);
				return;
			}
		}
		rec("after_kvm=0x%px", rt->kvm);
		return;
	}
#endif

	if (tdi)
		standin_rec_kvm("after_", tdi->kvm);
	else
		rec("after_kvm=0x0");
}

int standin_cmd_ioctl(unsigned int vdev_id, u32 op, u32 flags,
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
	rec("start_ns=%lld", ktime_to_ns(start));
	rec("duration_ns=%lld", ktime_to_ns(ktime_sub(ktime_get(), start)));
	sv = standin_find_vdev(vdev_id);
	if (sv && sv->pdev)
		standin_rec_binding(sv->pdev);
	return rc;
}

int standin_cmd_vdev_destroy(unsigned int id, bool unbind)
{
	struct standin_vdev *sv = standin_find_vdev(id);
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
	standin_rec_binding(sv->pdev);
	if (sv->vm)
		standin_vm_put(sv->vm);
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

	rc = standin_lookup_dev(devname, &dev, &pdev);
	if (rc)
		return rc;
	if (pdev) {
		pci_dev_put(pdev);
		return -EINVAL;
	}
	rec("dev=%s tdi_id=%llu kvm=bad", dev_name(dev), tdi_id);
	return tsm_bind(dev, STANDIN_BAD_KVM, tdi_id);
}

int standin_cmd_tsm_bind(const char *devname, const char *vmname, u64 tdi_id)
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
	vm = standin_find_vm(vm_id);
	if (!vm)
		return -ENOENT;
	rc = standin_lookup_dev(devname, &dev, &pdev);
	if (rc)
		return rc;
	rec("dev=%s tdi_id=%llu", dev_name(dev), tdi_id);
	standin_rec_kvm("", vm->kvm);
	start = ktime_get();
	rc = tsm_bind(dev, vm->kvm, tdi_id);
	rec("duration_ns=%lld", ktime_to_ns(ktime_sub(ktime_get(), start)));
	pci_dev_put(pdev);
	return rc;
}

int standin_cmd_tsm_unbind(const char *devname)
{
	struct pci_dev *pdev;
	struct device *dev;
	int rc;

	rc = standin_lookup_dev(devname, &dev, &pdev);
	if (rc)
		return rc;
	rec("dev=%s", dev_name(dev));
	rc = tsm_unbind(dev);
	pci_dev_put(pdev);
	return rc;
}

/* guest_req: the real pci_tsm_guest_req() (TDISP guest request) on a device. */
int standin_cmd_guest_req(const char *devname, u32 scope, u32 in_len,
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
	rc = standin_lookup_dev(devname, &dev, &pdev);
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
