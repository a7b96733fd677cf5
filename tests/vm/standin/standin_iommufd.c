// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_standin: iommufd, the patch's ioctl (iommufd_vdevice_tsm_op_ioctl) and vDevice
 * teardown (iommufd_vdevice_abort), with the object lookup and the respond step they use.
 */
#include "standin.h"

/* Knobs (ctl: inject respond_efault, respond_delay_us). */
unsigned int standin_inject_respond_count;
/* respond_delay_us: the ioctl sleeps before responding (the binding already made). */
unsigned long standin_respond_delay_us;

#if STANDIN_GEN != 2
/* Declared in tsm_standin_gen.h: the last op type handled (the enum stays in the BTF). */
enum iommu_vdevice_tsm_op_type standin_last_op_type;
#endif

/* ---- iommufd (the patch's ioctl and vDevice teardown) ---- */

struct iommufd_object *standin_get_object(struct iommufd_ctx *ictx,
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

void standin_put_object(struct iommufd_ctx *ictx,
			struct iommufd_object *obj)
{
	refcount_dec(&obj->users);
}

/* iommufd_ucmd_respond(): copy_to_user of the command; injectable -EFAULT. */
static noinline int standin_ucmd_respond(struct iommufd_ucmd *ucmd,
					 size_t cmd_len)
{
	if (standin_respond_delay_us)
		msleep(DIV_ROUND_UP(standin_respond_delay_us, 1000));
	if (standin_inject_respond_count) {
		standin_inject_respond_count--;
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
	standin_rec_kvm("", kvm);

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

bool standin_abort_unbind = true;

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
