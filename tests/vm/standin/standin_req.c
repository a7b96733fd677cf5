// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_standin: the guest-request path of every generation (patch 3/3 of v2, v5, the
 * post-v5 proposal; see tsm_standin_gen.h), and the `tsm_req` command driving it.
 *
 *   int     <STANDIN_REQ_IOCTL>(struct iommufd_ucmd *ucmd);      (0x96)
 *             v2 3/3: iommufd_vdevice_tsm_guest_request_ioctl
 *             v5, post-v5: iommufd_vdevice_tsm_req_ioctl
 *   ssize_t tsm_guest_req(struct device *dev, struct tsm_guest_req_info *info);  v2, v5
 *   ssize_t tsm_guest_req(struct device *dev, struct tsm_guest_req_info *info,
 *                         u64 *tsm_code);                                     post-v5
 *
 * Both call the kernel's own pci_tsm_guest_req() (7.x); without PCI TSM (6.x)
 * tsm_guest_req() returns -EOPNOTSUPP. The stand-in's request buffers are kernel memory:
 * req_uptr/resp_uptr carry kernel addresses, passed as KERNEL_SOCKPTR.
 *
 * `tsm_req <vdev_id> <scope|op> <req_len> <resp_len>` records, in order:
 *   vdevice_id; from the ioctl: ioctl (its function's name) ioctl_vdevice_id, then
 *   ioctl_scope (v2, v5) or ioctl_op ioctl_op_name ioctl_tvm_arch ioctl_tvm_arch_name
 *   (post-v5; names are the C enumerators), ioctl_req_len ioctl_resp_len; from
 *   tsm_guest_req(): tsm_dev info_scope | info_op info_tvm_arch, info_req_len
 *   info_resp_len, then (7.x) layer=tsm_guest_req scope (what pci_tsm_guest_req() was
 *   passed) scope_name (its enumerator) in_len out_len tsm_code_arg (1: a tsm_code
 *   pointer was passed down, 0: NULL); tsm_rc (what tsm_guest_req() returned); guest_rc
 *   (the ioctl's return) err (%pe, or 0) tsm_code (the value behind the pointer after the
 *   call; post-v5 only) duration_ns.
 */
#include "standin.h"

/* What the ioctl's tsm_code holds before the call (post-v5): a value to read back. */
#define STANDIN_TSM_CODE_SEED 0x5eedULL

#define NAME_CASE(x) case x: return #x

#if STANDIN_HAVE_REAL_PCI_TSM
static const char *standin_scope_name(enum pci_tsm_req_scope s)
{
	switch (s) {
	NAME_CASE(PCI_TSM_REQ_INFO);
	NAME_CASE(PCI_TSM_REQ_STATE_CHANGE);
	NAME_CASE(PCI_TSM_REQ_DEBUG_READ);
	NAME_CASE(PCI_TSM_REQ_DEBUG_WRITE);
	}
	return "?";
}
#endif

#if STANDIN_GEN >= 6
static const char *standin_op_name(u32 op)
{
	switch (op) {
	NAME_CASE(TSM_REQ_READ_OBJECT);
	NAME_CASE(TSM_REQ_REGEN_OBJECT);
	NAME_CASE(TSM_REQ_OBJECT_INFO);
	NAME_CASE(TSM_REQ_VALIDATE_MMIO);
	NAME_CASE(TSM_REQ_SET_TDI_STATE);
	NAME_CASE(TSM_REQ_SEV_ENABLE_DMA);
	NAME_CASE(TSM_REQ_SEV_DISABLE_DMA);
	}
	return "?";
}

static const char *standin_arch_name(u32 arch)
{
	switch (arch) {
	NAME_CASE(IOMMU_VDEVICE_TSM_TVM_ARCH_CCA);
	NAME_CASE(IOMMU_VDEVICE_TSM_TVM_ARCH_SEV);
	NAME_CASE(IOMMU_VDEVICE_TSM_TVM_ARCH_TDX);
	}
	return "?";
}
#endif

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
#endif

#if STANDIN_GEN < 6
	rec("tsm_dev=%s info_scope=%u", dev_name(dev), info->scope);
#else
	rec("tsm_dev=%s info_op=%u info_tvm_arch=%u", dev_name(dev), info->op,
	    info->tvm_arch);
#endif
	rec("info_req_len=%zu info_resp_len=%zu", info->req_len, info->resp_len);
#if STANDIN_HAVE_REAL_PCI_TSM
	if (!dev_is_pci(dev))
		return -EINVAL;
#if STANDIN_GEN < 6
	/* v2, v5: IOMMU_VDEVICE_TSM_REQ_PCI_* map one to one onto enum pci_tsm_req_scope. */
	if (info->scope > PCI_TSM_REQ_DEBUG_WRITE)
		return -EINVAL;
	scope = info->scope;
#else
	scope = info->op == TSM_REQ_SET_TDI_STATE ? PCI_TSM_REQ_STATE_CHANGE :
						    PCI_TSM_REQ_INFO;
#endif
	rec("layer=tsm_guest_req scope=%u scope_name=%s in_len=%zu out_len=%zu tsm_code_arg=%d",
	    scope, standin_scope_name(scope), info->req_len, info->resp_len,
	    tsm_code != NULL);
	return pci_tsm_guest_req(to_pci_dev(dev), scope, info->req,
				 info->req_len, info->resp, info->resp_len,
				 tsm_code);
#else
	return -EOPNOTSUPP;
#endif
}
EXPORT_SYMBOL_GPL(tsm_guest_req);

noinline int STANDIN_REQ_IOCTL(struct iommufd_ucmd *ucmd)
{
	struct STANDIN_REQ_CMD *cmd = ucmd->cmd;
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

	rec("ioctl=%s ioctl_vdevice_id=%u", STR(STANDIN_REQ_IOCTL), cmd->vdevice_id);
#if STANDIN_GEN < 6
	rec("ioctl_scope=%u", cmd->scope);
#else
	rec("ioctl_op=%u ioctl_op_name=%s ioctl_tvm_arch=%u ioctl_tvm_arch_name=%s",
	    cmd->op, standin_op_name(cmd->op), cmd->tvm_arch,
	    standin_arch_name(cmd->tvm_arch));
#endif
	rec("ioctl_req_len=%u ioctl_resp_len=%u", cmd->req_len, cmd->resp_len);
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
	rec("tsm_rc=%zd", rc);
	standin_put_object(ucmd->ictx, &vdev->obj);
	return rc;
}
EXPORT_SYMBOL_GPL(STANDIN_REQ_IOCTL);

int standin_cmd_tsm_req(u32 vdev_id, u32 scope_or_op, u32 req_len, u64 resp_len)
{
	struct STANDIN_REQ_CMD cmd = {
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
	rc = STANDIN_REQ_IOCTL(&ucmd);
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
}
