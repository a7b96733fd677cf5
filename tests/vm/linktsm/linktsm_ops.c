// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_linktsm: the link ops (probe targets) the PCI TSM core calls, their
 * injections and delays, and the struct pci_tsm_ops registered with tsm_register().
 */
#include "linktsm.h"

const char *const lt_op_names[OP_NR] = {
	[OP_PROBE] = "probe",		[OP_REMOVE] = "remove",
	[OP_CONNECT] = "connect",	[OP_DISCONNECT] = "disconnect",
	[OP_BIND] = "bind",		[OP_UNBIND] = "unbind",
	[OP_GUEST_REQ] = "guest_req",
	[OP_IDE_ALLOC] = "ide_alloc",	[OP_IDE_SETUP] = "ide_setup",
	[OP_IDE_ENABLE] = "ide_enable",	[OP_IDE_REGISTER] = "ide_register",
	[OP_IDE_DISABLE] = "ide_disable", [OP_IDE_UNREGISTER] = "ide_unregister",
	[OP_IDE_TEARDOWN] = "ide_teardown", [OP_IDE_FREE] = "ide_free",
	[OP_IDE_RELEASE] = "ide_release",
	[OP_SPDM_SESSION] = "spdm_session", [OP_SPDM_EXCHANGE] = "spdm_exchange",
	[OP_SPDM_RECV] = "spdm_recv",	[OP_SPDM_VERIFY] = "spdm_verify",
};

/* Injections, delays and guest_req results (ctl: inject, delay, guest_req_residue, tsm_code). */
int lt_inj_errno[OP_NR];
unsigned int lt_inj_count[OP_NR];
unsigned long lt_delay_us[OP_NR];
size_t lt_residue_cfg;
u64 lt_tsm_code_cfg;

atomic_t lt_n_contexts = ATOMIC_INIT(0);
atomic_t lt_n_tdis = ATOMIC_INIT(0);

/* Delay (if configured) and consume an injection; returns 0 or -errno. */
static int op_enter(int op)
{
	unsigned long us;
	int rc = 0;

	mutex_lock(&lt_st_lock);
	us = lt_delay_us[op];
	if (lt_inj_count[op]) {
		lt_inj_count[op]--;
		rc = -lt_inj_errno[op];
	}
	mutex_unlock(&lt_st_lock);
	if (us >= 20000)
		msleep(DIV_ROUND_UP(us, 1000));
	else if (us)
		usleep_range(us, us + 50);
	return rc;
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
	atomic_inc(&lt_n_contexts);
out:
	if (ret)
		lt_ev(OP_PROBE, pdev, tsm_dev, rc,
		      ktime_to_ns(ktime_sub(ktime_get(), start)),
		      " role=%s dsm=%s ret=0x%px", role, pci_name(ret->dsm_dev),
		      ret);
	else
		lt_ev(OP_PROBE, pdev, tsm_dev, rc,
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
	atomic_dec(&lt_n_contexts);
	lt_ev(OP_REMOVE, pdev, tsm_dev, 0,
	      ktime_to_ns(ktime_sub(ktime_get(), start)), " role=%s",
	      pf0 ? "pf0" : "fn");
}
EXPORT_SYMBOL_GPL(linktsm_remove);

noinline int linktsm_connect(struct pci_dev *pdev)
{
	ktime_t start = ktime_get();
	int rc = op_enter(OP_CONNECT);

	/* The SPDM session a TSM sets up first (linktsm_spdm.c: the deep trace's targets). */
	if (!rc)
		rc = lt_spdm_session(pdev);
	/* A device with IDE: its stream, as SEV-TIO sets one up (linktsm_ide.c). */
	if (!rc)
		rc = lt_ide_connect(pdev);
	lt_ev(OP_CONNECT, pdev, tsm_of(pdev), rc,
	      ktime_to_ns(ktime_sub(ktime_get(), start)), "%s", "");
	return rc;
}
EXPORT_SYMBOL_GPL(linktsm_connect);

noinline void linktsm_disconnect(struct pci_dev *pdev)
{
	ktime_t start = ktime_get();

	op_enter(OP_DISCONNECT);
	lt_ide_disconnect(pdev);
	lt_ev(OP_DISCONNECT, pdev, tsm_of(pdev), 0,
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
			atomic_inc(&lt_n_tdis);
		} else {
			rc = -ENOMEM;
		}
	}
	lt_ev(OP_BIND, pdev, tsm_of(pdev), rc,
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
	atomic_dec(&lt_n_tdis);
	lt_ev(OP_UNBIND, pdev, tsm_of(pdev), 0,
	      ktime_to_ns(ktime_sub(ktime_get(), start)), " kvm=0x%px tdi_id=%u",
	      kvm, tdi_id);
}
EXPORT_SYMBOL_GPL(linktsm_unbind);

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
	mutex_lock(&lt_st_lock);
	residue = lt_residue_cfg;
	code = lt_tsm_code_cfg;
	mutex_unlock(&lt_st_lock);
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
	lt_ev(OP_GUEST_REQ, tdi->pdev, tsm_of(tdi->pdev), rc,
	      ktime_to_ns(ktime_sub(ktime_get(), start)),
	      " kvm=0x%px tdi_id=%u scope=%u in_len=%zu out_len=%zu in_sum=%llu ret=%zd tsm_code=0x%llx",
	      tdi->kvm, tdi->tdi_id, (unsigned int)scope, in_len, out_len, in_sum,
	      ret, tsm_code ? *tsm_code : 0);
	return ret;
}
EXPORT_SYMBOL_GPL(linktsm_guest_req);

struct pci_tsm_ops linktsm_ops = {
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
