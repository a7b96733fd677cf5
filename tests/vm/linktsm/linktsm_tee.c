// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_linktsm: TEE marking, the device emulation: PCIe devices marked
 * TEE-capable (PCI_EXP_DEVCAP_TEE in the cached pdev->devcap) for the core's
 * is_pci_tsm_pf0(), restored on untee/unload; and BDF lookup.
 */
#include "linktsm.h"

static char *tee = "auto";
module_param(tee, charp, 0444);
MODULE_PARM_DESC(tee, "auto, none, or comma-separated BDFs to mark TEE-capable");

/* Devices this module marked TEE-capable (it restores their devcap). */
#define MAX_TEE 16
struct pci_dev *lt_tee_devs[MAX_TEE];
static bool tee_set_bit[MAX_TEE];
int lt_n_tee;

/* ---- TEE marking ---- */

static bool tee_candidate(struct pci_dev *pdev)
{
	if (!pci_is_pcie(pdev) || pdev->is_virtfn ||
	    PCI_FUNC(pdev->devfn) != 0)
		return false;
	switch (pci_pcie_type(pdev)) {
	case PCI_EXP_TYPE_ENDPOINT:
	case PCI_EXP_TYPE_UPSTREAM:
	case PCI_EXP_TYPE_RC_END:
		return true;
	default:
		return false;
	}
}

int lt_tee_find(struct pci_dev *pdev)
{
	int i;

	for (i = 0; i < lt_n_tee; i++)
		if (lt_tee_devs[i] == pdev)
			return i;
	return -1;
}

/* Takes over the caller's reference on success. */
int lt_tee_mark(struct pci_dev *pdev)
{
	if (lt_tee_find(pdev) >= 0) {
		pci_dev_put(pdev);
		return -EEXIST;
	}
	if (!pci_is_pcie(pdev)) {
		pci_dev_put(pdev);
		return -ENOTTY;
	}
	if (lt_n_tee >= MAX_TEE) {
		pci_dev_put(pdev);
		return -ENOSPC;
	}
	lt_tee_devs[lt_n_tee] = pdev;
	tee_set_bit[lt_n_tee] = !(pdev->devcap & PCI_EXP_DEVCAP_TEE);
	pdev->devcap |= PCI_EXP_DEVCAP_TEE;
	lt_n_tee++;
	return 0;
}

void lt_tee_unmark(int i)
{
	if (tee_set_bit[i])
		lt_tee_devs[i]->devcap &= ~PCI_EXP_DEVCAP_TEE;
	pci_dev_put(lt_tee_devs[i]);
	lt_tee_devs[i] = lt_tee_devs[lt_n_tee - 1];
	tee_set_bit[i] = tee_set_bit[lt_n_tee - 1];
	lt_n_tee--;
}

struct pci_dev *lt_lookup_bdf(const char *name)
{
	unsigned int domain = 0, bus, slot, fn;

	if (sscanf(name, "%x:%x:%x.%x", &domain, &bus, &slot, &fn) != 4) {
		domain = 0;
		if (sscanf(name, "%x:%x.%x", &bus, &slot, &fn) != 3)
			return ERR_PTR(-EINVAL);
	}
	if (bus > 255 || slot > 31 || fn > 7)
		return ERR_PTR(-EINVAL);
	return pci_get_domain_bus_and_slot(domain, bus, PCI_DEVFN(slot, fn)) ?:
	       ERR_PTR(-ENODEV);
}

void lt_tee_from_param(void)
{
	struct pci_dev *pdev = NULL;
	char *s, *p, *tok;

	if (!tee || !strcmp(tee, "none") || !*tee)
		return;
	if (!strcmp(tee, "auto")) {
		for_each_pci_dev(pdev)
			if (tee_candidate(pdev))
				lt_tee_mark(pci_dev_get(pdev));
		return;
	}
	s = kstrdup(tee, GFP_KERNEL);
	if (!s)
		return;
	p = s;
	while ((tok = strsep(&p, ",")) != NULL) {
		struct pci_dev *d = lt_lookup_bdf(tok);

		if (IS_ERR(d))
			pr_warn("tsm_linktsm: tee=%s: %pe\n", tok, d);
		else
			lt_tee_mark(d);
	}
	kfree(s);
}
