/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Generations of the iommufd TSM series in the tsm_standin fixture, picked at build time
 * with -DSTANDIN_GEN=<n> (Kbuild: `make STANDIN_GEN=5`):
 *
 *   2  (default) [PATCH v2 2/3] (March 2026, the seed): UAPI
 *      struct iommu_vdevice_tsm_op { size; op; flags; vdevice_id; } with
 *      #define IOMMU_VDEVICE_TSM_BIND 0x1 / _UNBIND 0x2; the vIOMMU holds kvm_filp.
 *      Its 3/3: the guest-request ioctl (0x96) IOMMU_VDEVICE_TSM_GUEST_REQUEST ->
 *      iommufd_vdevice_tsm_guest_request_ioctl() -> tsm_guest_req(dev, info) ->
 *      pci_tsm_guest_req().
 *   5  [PATCH v5] (May 2026): the member is `type`, values from
 *      enum iommu_vdevice_tsm_op_type; the vIOMMU holds kvm_file; the guest-request ioctl
 *      IOMMU_VDEVICE_TSM_REQ (0x96) -> iommufd_vdevice_tsm_req_ioctl() ->
 *      tsm_guest_req(struct device *, struct tsm_guest_req_info *) -> pci_tsm_guest_req()
 *      with a NULL tsm_code.
 *   6  the June 2026 uAPI proposal on top of v5 ("post-v5"): the request carries op and
 *      tvm_arch, and tsm_guest_req() takes a third argument, u64 *tsm_code, passed down.
 *      (The proposal also changes pci_tsm_guest_req(); vmlinux's cannot be changed, so the
 *      stand-in passes it a scope: PCI_TSM_REQ_STATE_CHANGE for TSM_REQ_SET_TDI_STATE,
 *      else PCI_TSM_REQ_INFO. The record says which.)
 *
 * Included by standin.h (every standin_*.c) before its copies of the iommufd types;
 * everything that differs between generations is here.
 */
#ifndef STANDIN_GEN
#define STANDIN_GEN 2
#endif

struct iommufd_ucmd;

#if STANDIN_GEN == 2
#define STANDIN_GEN_NAME "v2"
#elif STANDIN_GEN == 5
#define STANDIN_GEN_NAME "v5"
#elif STANDIN_GEN == 6
#define STANDIN_GEN_NAME "post-v5"
#else
#error "STANDIN_GEN must be 2, 5 or 6"
#endif

/* ---- The bind/unbind UAPI (IOMMU_VDEVICE_TSM_OP, 0x95) ---- */

#if STANDIN_GEN == 2
struct iommu_vdevice_tsm_op {
	__u32 size;
	__u32 op;
	__u32 flags;
	__u32 vdevice_id;
};

#define IOMMU_VDEVICE_TSM_BIND 0x1
#define IOMMU_VDEVICE_TSM_UNBIND 0x2
#define STANDIN_CMD_OP(cmd) ((cmd)->op)
#define STANDIN_SET_CMD_OP(cmd, v) ((cmd)->op = (v))
/* patch 1/3: the vIOMMU holds the VM's KVM file */
#define STANDIN_VIOMMU_KVM kvm_filp
#else
enum iommu_vdevice_tsm_op_type {
	IOMMU_VDEVICE_TSM_BIND = 0x1,
	IOMMU_VDEVICE_TSM_UNBIND,
};

struct iommu_vdevice_tsm_op {
	__u32 size;
	__u32 type;
	__u32 flags;
	__u32 vdevice_id;
};

/*
 * The last op type handled: keeps the enum in the module's BTF, as a user of it would
 * (defined in standin_iommufd.c).
 */
extern enum iommu_vdevice_tsm_op_type standin_last_op_type;
#define STANDIN_CMD_OP(cmd) (standin_last_op_type = (cmd)->type)
#define STANDIN_SET_CMD_OP(cmd, v) ((cmd)->type = (v))
#define STANDIN_VIOMMU_KVM kvm_file
#endif

/* ---- The guest-request path (0x96; patch 3/3 of v2, v5, post-v5) ---- */

#if STANDIN_GEN <= 5
/*
 * v2 3/3 and v5: the request carries a scope (IOMMU_VDEVICE_TSM_REQ_PCI_*, one to one onto
 * enum pci_tsm_req_scope). v2 3/3 (like v4, as posted 2026-04-27) names the command
 * IOMMU_VDEVICE_TSM_GUEST_REQUEST, struct iommu_vdevice_tsm_guest_request, handled by
 * iommufd_vdevice_tsm_guest_request_ioctl(); v5 renames them IOMMU_VDEVICE_TSM_REQ,
 * struct iommu_vdevice_tsm_req, iommufd_vdevice_tsm_req_ioctl(). Same layout.
 */
struct tsm_guest_req_info {
	u32 scope;
	sockptr_t req;
	size_t req_len;
	sockptr_t resp;
	size_t resp_len;
};

#if STANDIN_GEN == 2
#define STANDIN_REQ_CMD iommu_vdevice_tsm_guest_request
#define STANDIN_REQ_IOCTL iommufd_vdevice_tsm_guest_request_ioctl
#else
#define STANDIN_REQ_CMD iommu_vdevice_tsm_req
#define STANDIN_REQ_IOCTL iommufd_vdevice_tsm_req_ioctl
#endif

/* UAPI (0x96): the fields the stand-in uses, in the order v5 posted them. */
struct STANDIN_REQ_CMD {
	__u32 size;
	__u32 vdevice_id;
	__u32 scope;
	__u32 req_len;
	__u32 resp_len;
	__u32 __reserved;
	__aligned_u64 req_uptr;
	__aligned_u64 resp_uptr;
};

ssize_t tsm_guest_req(struct device *dev, struct tsm_guest_req_info *info);
#else
enum iommu_vdevice_tsm_guest_req_op {
	TSM_REQ_READ_OBJECT = 1,
	TSM_REQ_REGEN_OBJECT,
	TSM_REQ_OBJECT_INFO,
	TSM_REQ_VALIDATE_MMIO,
	TSM_REQ_SET_TDI_STATE,
	TSM_REQ_SEV_ENABLE_DMA,
	TSM_REQ_SEV_DISABLE_DMA,
};

enum iommu_vdevice_tsm_guest_tvm_arch {
	IOMMU_VDEVICE_TSM_TVM_ARCH_CCA = 1,
	IOMMU_VDEVICE_TSM_TVM_ARCH_SEV,
	IOMMU_VDEVICE_TSM_TVM_ARCH_TDX,
};

struct tsm_guest_req_info {
	enum iommu_vdevice_tsm_guest_req_op op;
	enum iommu_vdevice_tsm_guest_tvm_arch tvm_arch;
	sockptr_t req;
	size_t req_len;
	sockptr_t resp;
	size_t resp_len;
};

#define STANDIN_REQ_CMD iommu_vdevice_tsm_req
#define STANDIN_REQ_IOCTL iommufd_vdevice_tsm_req_ioctl

struct iommu_vdevice_tsm_req {
	__u32 size;
	__u32 vdevice_id;
	__u32 op;
	__u32 tvm_arch;
	__u32 req_len;
	__u32 resp_len;
	__aligned_u64 req_uptr;
	__aligned_u64 resp_uptr;
	__aligned_u64 tsm_code;
};

ssize_t tsm_guest_req(struct device *dev, struct tsm_guest_req_info *info,
		      u64 *tsm_code);
#endif
int STANDIN_REQ_IOCTL(struct iommufd_ucmd *ucmd);
