// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_standin: the guest-request path of v5 and the post-v5 proposal (see
 * tsm_standin_gen.h), and the `tsm_req` command driving it.
 *
 *   int     iommufd_vdevice_tsm_req_ioctl(struct iommufd_ucmd *ucmd);   (0x96)
 *   ssize_t tsm_guest_req(struct device *dev, struct tsm_guest_req_info *info);      v5
 *   ssize_t tsm_guest_req(struct device *dev, struct tsm_guest_req_info *info,
 *                         u64 *tsm_code);                                     post-v5
 *
 * Both call the kernel's own pci_tsm_guest_req() (7.x). The stand-in's request buffers are
 * kernel memory: req_uptr/resp_uptr carry kernel addresses, passed as KERNEL_SOCKPTR.
 *
 * `tsm_req <vdev_id> <scope|op> <req_len> <resp_len>` records, in order:
 *   vdevice_id, then from tsm_guest_req(): layer=tsm_guest_req scope (what
 *   pci_tsm_guest_req() was passed) in_len out_len tsm_code_arg (1: a tsm_code pointer was
 *   passed down, 0: NULL), then guest_rc err (%pe, or 0) tsm_code (the value behind the
 *   pointer after the call; post-v5 only) duration_ns.
 */
#include "standin.h"

/* What the ioctl's tsm_code holds before the call (post-v5): a value to read back. */
#define STANDIN_TSM_CODE_SEED 0x5eedULL

#if STANDIN_GEN >= 5
noinline ssize_t tsm_guest_req(struct device *dev, struct tsm_guest_req_info *info
#if STANDIN_GEN >= 6
			       , u64 *tsm_code
#endif
			       )
{
#if STANDIN_HAVE_REAL_PCI_TSM
	enum pci_tsm_req_scope scope;
#if STANDIN_GEN < 6
	u64 *tsm_code = NULL;
#endif

	if (!dev_is_pci(dev))
		return -EINVAL;
#if STANDIN_GEN < 6
	/* v5: IOMMU_VDEVICE_TSM_REQ_PCI_* map one to one onto enum pci_tsm_req_scope. */
	if (info->scope > PCI_TSM_REQ_DEBUG_WRITE)
		return -EINVAL;
	scope = info->scope;
#else
	scope = info->op == TSM_REQ_SET_TDI_STATE ? PCI_TSM_REQ_STATE_CHANGE :
						    PCI_TSM_REQ_INFO;
#endif
	rec("layer=tsm_guest_req scope=%u in_len=%zu out_len=%zu tsm_code_arg=%d",
	    scope, info->req_len, info->resp_len, tsm_code != NULL);
	return pci_tsm_guest_req(to_pci_dev(dev), scope, info->req,
				 info->req_len, info->resp, info->resp_len,
				 tsm_code);
#else
	return -EOPNOTSUPP;
#endif
}
EXPORT_SYMBOL_GPL(tsm_guest_req);

noinline int iommufd_vdevice_tsm_req_ioctl(struct iommufd_ucmd *ucmd)
{
	struct iommu_vdevice_tsm_req *cmd = ucmd->cmd;
	struct tsm_guest_req_info info = {
#if STANDIN_GEN < 6
		.scope = cmd->scope,
#else
		.op = cmd->op,
		.tvm_arch = cmd->tvm_arch,
#endif
		.req = KERNEL_SOCKPTR((void *)(uintptr_t)cmd->req_uptr),
		.req_len = cmd->req_len,
		.resp = KERNEL_SOCKPTR((void *)(uintptr_t)cmd->resp_uptr),
		.resp_len = cmd->resp_len,
	};
	struct iommufd_vdevice *vdev;
	struct iommufd_object *obj;
	ssize_t rc;
#if STANDIN_GEN >= 6
	u64 code = cmd->tsm_code;
#endif

	obj = standin_get_object(ucmd->ictx, cmd->vdevice_id,
				 IOMMUFD_OBJ_VDEVICE);
	if (IS_ERR(obj))
		return PTR_ERR(obj);
	vdev = container_of(obj, struct iommufd_vdevice, obj);
#if STANDIN_GEN >= 6
	rc = tsm_guest_req(vdev->idev->dev, &info, &code);
	cmd->tsm_code = code;
#else
	rc = tsm_guest_req(vdev->idev->dev, &info);
#endif
	standin_put_object(ucmd->ictx, &vdev->obj);
	return rc;
}
EXPORT_SYMBOL_GPL(iommufd_vdevice_tsm_req_ioctl);
#endif

int standin_cmd_tsm_req(u32 vdev_id, u32 scope_or_op, u32 req_len, u64 resp_len)
{
#if STANDIN_GEN >= 5
	struct iommu_vdevice_tsm_req cmd = {
		.size = sizeof(cmd),
		.vdevice_id = vdev_id,
#if STANDIN_GEN < 6
		.scope = scope_or_op,
#else
		.op = scope_or_op,
		.tvm_arch = IOMMU_VDEVICE_TSM_TVM_ARCH_CCA,
		.tsm_code = STANDIN_TSM_CODE_SEED,
#endif
		.req_len = req_len,
		.resp_len = resp_len,
	};
	struct iommufd_ucmd ucmd = {
		.ictx = &standin_ictx,
		.user_size = sizeof(cmd),
		.cmd = &cmd,
	};
	char err[32] = "0";
	ktime_t start;
	u8 *in, *out;
	int rc;
	u32 i;

	rec("vdevice_id=%u", vdev_id);
	if (req_len > PAGE_SIZE || resp_len > PAGE_SIZE)
		return -E2BIG;
	in = kmalloc(PAGE_SIZE, GFP_KERNEL);
	out = kzalloc(PAGE_SIZE, GFP_KERNEL);
	if (!in || !out) {
		rc = -ENOMEM;
		goto out;
	}
	for (i = 0; i < req_len; i++)
		in[i] = i & 0xff;
	cmd.req_uptr = (uintptr_t)in;
	cmd.resp_uptr = (uintptr_t)out;
	start = ktime_get();
	rc = iommufd_vdevice_tsm_req_ioctl(&ucmd);
	if (rc < 0)
		snprintf(err, sizeof(err), "%pe", ERR_PTR(rc));
	rec("guest_rc=%d err=%s", rc, err);
#if STANDIN_GEN >= 6
	rec("tsm_code=0x%llx", cmd.tsm_code);
#endif
	rec("duration_ns=%lld", ktime_to_ns(ktime_sub(ktime_get(), start)));
out:
	kfree(in);
	kfree(out);
	return rc < 0 ? rc : 0;
#else
	return -EOPNOTSUPP;
#endif
}
