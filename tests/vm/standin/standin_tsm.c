// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_standin: the layers below iommufd: the TSM driver (standin_tdi_bind/unbind), the
 * PCI TSM layer (pci_tsm_bind/unbind semantics, and its internal unbind path that the
 * `disconnect` command takes) and tsm-core (the patch's tsm_bind/tsm_unbind).
 */
#include "standin.h"

/* Knobs (ctl: inject driver, delay_us, realpci). */
int standin_inject_driver_errno;
unsigned int standin_inject_driver_count;
unsigned long standin_bind_delay_us;
bool standin_realpci;
static int standin_last_driver_rc;

/* ---- TSM driver layer ---- */

noinline void *standin_tdi_bind(struct pci_dev *pdev, struct kvm *kvm,
				u32 tdi_id)
{
	ktime_t start = ktime_get();
	struct standin_tdi *tdi;
	void *ret;

	if (standin_bind_delay_us) {
		if (standin_bind_delay_us >= 20000)
			msleep(DIV_ROUND_UP(standin_bind_delay_us, 1000));
		else
			usleep_range(standin_bind_delay_us, standin_bind_delay_us + 50);
	}
	if (standin_inject_driver_count) {
		standin_inject_driver_count--;
		ret = ERR_PTR(FAIL("tsm_driver", -standin_inject_driver_errno));
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

struct standin_tdi *standin_find_tdi(struct pci_dev *pdev)
{
	struct standin_tdi *tdi;

	list_for_each_entry(tdi, &standin_tdis, node)
		if (tdi->pdev == pdev)
			return tdi;
	return NULL;
}

noinline void standin_tdi_unbind(struct pci_dev *pdev)
{
	struct standin_tdi *tdi = standin_find_tdi(pdev);

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
	cur = standin_find_tdi(pdev);
	if (cur) {
		standin_rec_kvm("bound_", cur->kvm);
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
	if (standin_find_tdi(pdev))
		standin_tdi_unbind(pdev);
}

noinline void STANDIN_PCI_UNBIND(struct pci_dev *pdev)
{
	rec("layer=%s", STR(STANDIN_PCI_UNBIND));
	__standin_pci_tsm_unbind(pdev);
}
EXPORT_SYMBOL_GPL(STANDIN_PCI_UNBIND);

/*
 * disconnect <bdf>: unbind through the PCI layer's internal path (like upstream
 * pci_tsm_unbind_all()), bypassing pci_tsm_unbind().
 */
int standin_cmd_disconnect(const char *devname)
{
	struct standin_tdi *tdi;
	struct pci_dev *pdev;
	struct device *dev;
	int rc;

	rc = standin_lookup_dev(devname, &dev, &pdev);
	if (rc)
		return rc;
	rec("dev=%s", dev_name(dev));
	if (!pdev)
		return -EINVAL;
	tdi = standin_find_tdi(pdev);
	if (tdi)
		standin_rec_kvm("bound_", tdi->kvm);
	__standin_pci_tsm_unbind(pdev);
	pci_dev_put(pdev);
	return 0;
}

/* ---- tsm-core (the patch's tsm_bind/tsm_unbind) ---- */

noinline int tsm_bind(struct device *dev, struct kvm *kvm, u64 tdi_id)
{
	if (!dev_is_pci(dev))
		return FAIL("tsm_core", -EINVAL);

#if STANDIN_HAVE_REAL_PCI_TSM
	if (standin_realpci) {
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
	if (standin_realpci) {
		rec("layer=pci_tsm_unbind");
		pci_tsm_unbind(to_pci_dev(dev));
		return 0;
	}
#endif
	STANDIN_PCI_UNBIND(to_pci_dev(dev));
	return 0;
}
EXPORT_SYMBOL_GPL(tsm_unbind);
