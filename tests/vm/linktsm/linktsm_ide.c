// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_linktsm: PCIe IDE for the fixture.
 *
 * 1. Register emulation (the device side). `ctl ide_emulate <ep_bdf>` wraps the config
 *    accessors of the endpoint's bus and of its root port's bus (pci_bus_set_ops(), as
 *    aer_inject does) and makes both devices show an IDE extended capability (id 0x30):
 *    it is spliced into the extended capability list (the last capability's "next"
 *    points at it) and backed by a small register file here: IDE Capability (Selective
 *    IDE, N streams, no Link IDE), IDE Control, and per Selective Stream SEL_CAP (number
 *    of address association blocks), SEL_CTL, SEL_STS, RID 1/2 and the address blocks.
 *    SEL_STS reads Secure (2) once SEL_CTL.EN is set, unless `ide_secure ep|rp 0` makes
 *    that side stay Insecure (0): the kernel's pci_ide_stream_enable() then returns
 *    -ENXIO.  Nothing of the kernel is faked: the kernel finds the capability itself
 *    when the root port is removed and the bus rescanned (the scenario does that through
 *    sysfs), in pci_ide_init(), and sets pdev->ide_cap, nr_sel_ide, nr_ide_mem.
 *
 * 2. A link TSM's IDE work (the host side): linktsm_connect() of a device with ide_cap
 *    calls the kernel's own pci_ide_stream_* in AMD SEV-TIO's order
 *    (drivers/crypto/ccp/sev-dev-tsm.c): alloc (stream_id = host_bridge_stream) ->
 *    setup EP, setup RP -> enable RP, then EP (an EP failure disables the RP; the
 *    result is ignored, as SEV-TIO ignores it) -> register (a failure: disable, teardown,
 *    free, connect fails). linktsm_disconnect(): disable EP, RP -> unregister ->
 *    teardown EP, RP -> free.  An alloc that returns NULL fails the connect with -EFAULT
 *    (SEV-TIO's code).
 *
 * Every call is one line in the events log ("op=ide_<step>", dev = the partner the call
 * was made on, rc/err as returned, %pe) with the stream's fields as the fixture read
 * them from struct pci_ide after the call: stream=<sysfs name|none> stream_id= hb=
 * ep= rp= ep_idx= rp_idx=.
 *
 * ctl commands:
 *   ide_emulate <ep_bdf>        emulate IDE on the endpoint and its root port
 *   ide_secure ep|rp 0|1        that side's stream reaches Secure after enable (default 1)
 *   ide_nr_streams <n>          pci_ide_set_nr_streams() on the endpoint's host bridge
 *   ide_stream_id <n>           the next connect registers this stream id (-1: default)
 *   ide_leak [count]            the next <count> disconnects leave the stream registered
 *                               (no unregister, no free: it is parked)
 *   ide_release                 pci_ide_stream_release() on every parked stream
 *   ide_info <bdf>              records what the kernel discovered: ide_cap nr_sel_ide
 *                               nr_ide_mem nr_link_ide (and the emulated offsets)
 */
#include "linktsm.h"
#include <linux/bitfield.h>
#include <linux/pci-ide.h>
#include <linux/spinlock.h>

MODULE_IMPORT_NS("PCI_IDE");

/* ---- Register emulation ---- */

#define IDE_CAP_OFF	0xc00	/* where the spliced capability lives */
#define IDE_DWORDS	64	/* 256 bytes of registers */

struct lt_ide_dev {
	bool active;
	u8 busnr;
	unsigned int devfn;
	u16 last_cap;		/* the capability whose "next" now points at ours (0: none) */
	u8 nr_sel;		/* Selective IDE streams */
	u8 nr_assoc;		/* address association blocks per stream */
	bool secure;		/* STS reaches Secure once CTL.EN is set */
	u32 regs[IDE_DWORDS];
	char bdf[16];
};

enum { IDE_EP, IDE_RP, IDE_NDEV };
static struct lt_ide_dev ide_dev[IDE_NDEV];
static DEFINE_SPINLOCK(ide_regs_lock);

/* The buses whose accessors are wrapped, with their own original accessors. */
#define MAX_WRAPPED 4
static struct pci_bus *wrapped_bus[MAX_WRAPPED];
static struct pci_ops *wrapped_orig[MAX_WRAPPED];
static int n_wrapped;

static unsigned int sel_block(const struct lt_ide_dev *d)
{
	return PCI_IDE_SEL_BLOCK_SIZE(d->nr_assoc);
}

static unsigned int ide_len(const struct lt_ide_dev *d)
{
	return PCI_IDE_LINK_STREAM_0 + d->nr_sel * sel_block(d);
}

/* The original accessors of @bus: its own, or (a bus created after wrapping, which
 * inherited the wrapper from its parent) the nearest wrapped ancestor's. */
static struct pci_ops *orig_ops(struct pci_bus *bus)
{
	struct pci_bus *b;
	int i;

	for (b = bus; b; b = b->parent)
		for (i = 0; i < n_wrapped; i++)
			if (wrapped_bus[i] == b)
				return wrapped_orig[i];
	return n_wrapped ? wrapped_orig[0] : NULL;
}

static struct lt_ide_dev *ide_find(struct pci_bus *bus, unsigned int devfn)
{
	int i;

	if (pci_domain_nr(bus) != 0)
		return NULL;
	for (i = 0; i < IDE_NDEV; i++)
		if (ide_dev[i].active && ide_dev[i].busnr == bus->number &&
		    ide_dev[i].devfn == devfn)
			return &ide_dev[i];
	return NULL;
}

/* The register value, with the status computed from the control register. */
static u32 ide_reg(struct lt_ide_dev *d, unsigned int off)
{
	unsigned int in;

	if (off < PCI_IDE_LINK_STREAM_0)
		return d->regs[off / 4];
	in = (off - PCI_IDE_LINK_STREAM_0) % sel_block(d);
	if (in == PCI_IDE_SEL_STS) {
		u32 ctl = d->regs[(off - PCI_IDE_SEL_STS + PCI_IDE_SEL_CTL) / 4];

		return (ctl & PCI_IDE_SEL_CTL_EN) && READ_ONCE(d->secure) ?
			       PCI_IDE_SEL_STS_STATE_SECURE :
			       PCI_IDE_SEL_STS_STATE_INSECURE;
	}
	return d->regs[off / 4];
}

/* Writable: IDE Control, and per stream CTL, RID 1/2, the address blocks. */
static bool ide_writable(struct lt_ide_dev *d, unsigned int off)
{
	unsigned int in;

	if (off == PCI_IDE_CTL)
		return true;
	if (off < PCI_IDE_LINK_STREAM_0)
		return false;
	in = (off - PCI_IDE_LINK_STREAM_0) % sel_block(d);
	return in != PCI_IDE_SEL_CAP && in != PCI_IDE_SEL_STS;
}

static int lt_ide_read(struct pci_bus *bus, unsigned int devfn, int where,
		       int size, u32 *val)
{
	struct pci_ops *ops = orig_ops(bus);
	struct lt_ide_dev *d = ide_find(bus, devfn);
	unsigned int dw = where & ~3, sh = (where & 3) * 8;
	unsigned long flags;
	u32 v;
	int rc;

	if (!ops)
		return PCIBIOS_DEVICE_NOT_FOUND;
	if (!d)
		return ops->read(bus, devfn, where, size, val);
	if (dw >= IDE_CAP_OFF && dw < IDE_CAP_OFF + ide_len(d)) {
		spin_lock_irqsave(&ide_regs_lock, flags);
		v = ide_reg(d, dw - IDE_CAP_OFF);
		spin_unlock_irqrestore(&ide_regs_lock, flags);
	} else if (d->last_cap && dw == d->last_cap) {
		rc = ops->read(bus, devfn, dw, 4, &v);
		if (rc)
			return rc;
		v = (v & ~0xfff00000u) | ((u32)IDE_CAP_OFF << 20);
	} else {
		return ops->read(bus, devfn, where, size, val);
	}
	v >>= sh;
	if (size == 1)
		v &= 0xff;
	else if (size == 2)
		v &= 0xffff;
	*val = v;
	return PCIBIOS_SUCCESSFUL;
}

static int lt_ide_write(struct pci_bus *bus, unsigned int devfn, int where,
			int size, u32 val)
{
	struct pci_ops *ops = orig_ops(bus);
	struct lt_ide_dev *d = ide_find(bus, devfn);
	unsigned int dw = where & ~3, sh = (where & 3) * 8, off;
	unsigned long flags;
	u32 mask;

	if (!ops)
		return PCIBIOS_DEVICE_NOT_FOUND;
	if (!d || dw < IDE_CAP_OFF || dw >= IDE_CAP_OFF + ide_len(d))
		return ops->write(bus, devfn, where, size, val);
	off = dw - IDE_CAP_OFF;
	if (!ide_writable(d, off))
		return PCIBIOS_SUCCESSFUL;	/* read-only: ignored, as hardware does */
	mask = size == 4 ? ~0u : ((1u << (size * 8)) - 1) << sh;
	spin_lock_irqsave(&ide_regs_lock, flags);
	d->regs[off / 4] = (d->regs[off / 4] & ~mask) | ((val << sh) & mask);
	spin_unlock_irqrestore(&ide_regs_lock, flags);
	return PCIBIOS_SUCCESSFUL;
}

static struct pci_ops lt_ide_ops = {
	.read = lt_ide_read,
	.write = lt_ide_write,
};

static int wrap_bus(struct pci_bus *bus)
{
	int i;

	for (i = 0; i < n_wrapped; i++)
		if (wrapped_bus[i] == bus)
			return 0;
	if (bus->ops == &lt_ide_ops)
		return 0;	/* inherited from a wrapped parent */
	if (n_wrapped >= MAX_WRAPPED)
		return -ENOSPC;
	wrapped_bus[n_wrapped] = bus;
	wrapped_orig[n_wrapped] = bus->ops;
	n_wrapped++;
	pci_bus_set_ops(bus, &lt_ide_ops);
	return 0;
}

static void unwrap_tree(struct pci_bus *bus)
{
	struct pci_bus *child;

	list_for_each_entry(child, &bus->children, node)
		unwrap_tree(child);
	if (bus->ops == &lt_ide_ops)
		pci_bus_set_ops(bus, orig_ops(bus));
}

/* The last extended capability's offset (0: the device has none). */
static u16 last_ext_cap(struct pci_dev *pdev)
{
	u16 pos = PCI_CFG_SPACE_SIZE, last = 0;
	int ttl = (PCI_CFG_SPACE_EXP_SIZE - PCI_CFG_SPACE_SIZE) / 8;
	u32 h;

	while (ttl-- > 0) {
		if (pci_read_config_dword(pdev, pos, &h) || !h || h == ~0u)
			break;
		last = pos;
		pos = PCI_EXT_CAP_NEXT(h);
		if (pos < PCI_CFG_SPACE_SIZE)
			break;
	}
	return last;
}

static int ide_dev_init(struct lt_ide_dev *d, struct pci_dev *pdev, u8 nr_sel,
			u8 nr_assoc)
{
	unsigned int i;
	u32 v;

	if (pdev->cfg_size < PCI_CFG_SPACE_EXP_SIZE)
		return -ENOTTY;
	/* The spliced capability must not hide registers the device has. */
	for (i = 0; i < IDE_DWORDS; i++) {
		if (pci_read_config_dword(pdev, IDE_CAP_OFF + 4 * i, &v))
			return -EIO;
		if (v && v != ~0u)
			return -EBUSY;
	}
	memset(d, 0, sizeof(*d));
	d->busnr = pdev->bus->number;
	d->devfn = pdev->devfn;
	d->last_cap = last_ext_cap(pdev);
	d->nr_sel = nr_sel;
	d->nr_assoc = nr_assoc;
	d->secure = true;
	strscpy(d->bdf, pci_name(pdev), sizeof(d->bdf));
	/* Header: id, version 1, next 0. */
	d->regs[0] = PCI_EXT_CAP_ID_IDE | (1 << 16);
	d->regs[PCI_IDE_CAP / 4] = PCI_IDE_CAP_SELECTIVE | PCI_IDE_CAP_IDE_KM |
				   PCI_IDE_CAP_TEE_LIMITED |
				   FIELD_PREP(PCI_IDE_CAP_SEL_NUM, nr_sel - 1);
	for (i = 0; i < nr_sel; i++)
		d->regs[(PCI_IDE_LINK_STREAM_0 + i * sel_block(d) + PCI_IDE_SEL_CAP) / 4] =
			FIELD_PREP(PCI_IDE_SEL_CAP_ASSOC_NUM, nr_assoc);
	return 0;
}

static int cmd_ide_emulate(const char *bdf)
{
	struct pci_dev *ep = lt_lookup_bdf(bdf), *rp;
	unsigned long flags;
	int rc;

	if (IS_ERR(ep))
		return PTR_ERR(ep);
	rc = -EINVAL;
	if (!pci_is_pcie(ep) || pci_pcie_type(ep) != PCI_EXP_TYPE_ENDPOINT)
		goto out;
	rp = pcie_find_root_port(ep);
	rc = -ENODEV;
	if (!rp)
		goto out;
	rc = -EEXIST;
	if (ide_dev[IDE_EP].active || ide_dev[IDE_RP].active)
		goto out;
	/* The endpoint: 2 streams, 1 address block each; the root port: 4 and 2. */
	rc = ide_dev_init(&ide_dev[IDE_EP], ep, 2, 1);
	if (!rc)
		rc = ide_dev_init(&ide_dev[IDE_RP], rp, 4, 2);
	if (rc)
		goto out;
	rc = wrap_bus(rp->bus);
	if (!rc)
		rc = wrap_bus(ep->bus);
	if (rc)
		goto out;
	spin_lock_irqsave(&ide_regs_lock, flags);
	ide_dev[IDE_EP].active = true;
	ide_dev[IDE_RP].active = true;
	spin_unlock_irqrestore(&ide_regs_lock, flags);
	rec("ep=%s rp=%s cap=0x%x ep_last_cap=0x%x rp_last_cap=0x%x", pci_name(ep),
	    pci_name(rp), IDE_CAP_OFF, ide_dev[IDE_EP].last_cap,
	    ide_dev[IDE_RP].last_cap);
out:
	pci_dev_put(ep);
	return rc;
}

/* ---- The link TSM's streams ---- */

#define MAX_STREAMS 8
static DEFINE_MUTEX(ide_lock);
/* Streams of connected devices, and parked (leaked) ones. */
static struct {
	struct pci_dev *pdev;
	struct pci_ide *ide;
} conn[MAX_STREAMS];
static struct pci_ide *parked[MAX_STREAMS];
static int next_stream_id = -1;
static unsigned int leak_count;

static void ide_ev(int op, struct pci_dev *on, struct pci_ide *ide, long rc,
		   ktime_t start)
{
	struct pci_dev *rp = ide ? pcie_find_root_port(ide->pdev) : NULL;

	if (!ide) {
		lt_ev(op, on, lt_tsm, rc, ktime_to_ns(ktime_sub(ktime_get(), start)),
		      " stream=none stream_id=none hb=none ep=%s rp=none ep_idx=none rp_idx=none",
		      pci_name(on));
		return;
	}
	lt_ev(op, on, lt_tsm, rc, ktime_to_ns(ktime_sub(ktime_get(), start)),
	      " stream=%s stream_id=%d hb=%u ep=%s rp=%s ep_idx=%u rp_idx=%u",
	      ide->name ?: "none", ide->stream_id, ide->host_bridge_stream,
	      pci_name(ide->pdev), rp ? pci_name(rp) : "none",
	      ide->partner[PCI_IDE_EP].stream_index,
	      ide->partner[PCI_IDE_RP].stream_index);
}

/* Each call below: timed, logged with the stream as it is after the call. */
static void do_setup(struct pci_dev *on, struct pci_ide *ide)
{
	ktime_t t = ktime_get();

	pci_ide_stream_setup(on, ide);
	ide_ev(OP_IDE_SETUP, on, ide, 0, t);
}

static int do_enable(struct pci_dev *on, struct pci_ide *ide)
{
	ktime_t t = ktime_get();
	int rc = pci_ide_stream_enable(on, ide);

	ide_ev(OP_IDE_ENABLE, on, ide, rc, t);
	return rc;
}

static void do_disable(struct pci_dev *on, struct pci_ide *ide)
{
	ktime_t t = ktime_get();

	pci_ide_stream_disable(on, ide);
	ide_ev(OP_IDE_DISABLE, on, ide, 0, t);
}

static void do_teardown(struct pci_dev *on, struct pci_ide *ide)
{
	ktime_t t = ktime_get();

	pci_ide_stream_teardown(on, ide);
	ide_ev(OP_IDE_TEARDOWN, on, ide, 0, t);
}

static void do_free(struct pci_ide *ide)
{
	struct pci_dev *ep = ide->pdev;
	ktime_t t = ktime_get();

	pci_ide_stream_free(ide);
	ide_ev(OP_IDE_FREE, ep, NULL, 0, t);
}

int lt_ide_connect(struct pci_dev *pdev)
{
	struct pci_dev *rp = pcie_find_root_port(pdev);
	struct pci_ide *ide;
	ktime_t t;
	int rc, i, slot = -1, sid;

	if (!pdev->ide_cap || !rp)
		return 0;
	mutex_lock(&ide_lock);
	for (i = 0; i < MAX_STREAMS; i++) {
		if (conn[i].pdev == pdev) {
			rc = -EBUSY;	/* SEV-TIO: a stream for this class exists */
			goto out;
		}
		if (!conn[i].pdev && slot < 0)
			slot = i;
	}
	rc = -ENOSPC;
	if (slot < 0)
		goto out;

	t = ktime_get();
	ide = pci_ide_stream_alloc(pdev);
	ide_ev(OP_IDE_ALLOC, pdev, ide, ide ? 0 : -EFAULT, t);
	rc = -EFAULT;
	if (!ide)
		goto out;
	sid = next_stream_id;
	next_stream_id = -1;
	ide->stream_id = sid >= 0 ? sid : ide->host_bridge_stream;

	do_setup(pdev, ide);
	do_setup(rp, ide);
	/* SEV-TIO's stream_enable(): root port, then endpoint; its caller ignores the result. */
	if (!do_enable(rp, ide) && do_enable(pdev, ide))
		do_disable(rp, ide);

	t = ktime_get();
	rc = pci_ide_stream_register(ide);
	ide_ev(OP_IDE_REGISTER, pdev, ide, rc, t);
	if (rc) {
		do_disable(pdev, ide);
		do_disable(rp, ide);
		do_teardown(pdev, ide);
		do_teardown(rp, ide);
		do_free(ide);
		goto out;
	}
	conn[slot].pdev = pci_dev_get(pdev);
	conn[slot].ide = ide;
out:
	mutex_unlock(&ide_lock);
	return rc;
}

void lt_ide_disconnect(struct pci_dev *pdev)
{
	struct pci_dev *rp = pcie_find_root_port(pdev);
	struct pci_ide *ide = NULL;
	bool leak = false;
	ktime_t t;
	int i;

	mutex_lock(&ide_lock);
	for (i = 0; i < MAX_STREAMS; i++)
		if (conn[i].pdev == pdev) {
			ide = conn[i].ide;
			pci_dev_put(conn[i].pdev);
			conn[i].pdev = NULL;
			conn[i].ide = NULL;
			break;
		}
	if (!ide)
		goto out;
	if (leak_count) {
		leak_count--;
		leak = true;
	}
	do_disable(pdev, ide);
	do_disable(rp, ide);
	if (!leak) {
		t = ktime_get();
		pci_ide_stream_unregister(ide);
		ide_ev(OP_IDE_UNREGISTER, pdev, ide, 0, t);
	}
	do_teardown(pdev, ide);
	do_teardown(rp, ide);
	if (!leak) {
		do_free(ide);
		goto out;
	}
	for (i = 0; i < MAX_STREAMS; i++)
		if (!parked[i]) {
			parked[i] = ide;
			break;
		}
	/* No room: it stays leaked for good (the test never gets there). */
out:
	mutex_unlock(&ide_lock);
}

static int cmd_ide_release(void)
{
	struct pci_ide *ide;
	struct pci_dev *ep;
	int i, n = 0;
	ktime_t t;

	mutex_lock(&ide_lock);
	for (i = 0; i < MAX_STREAMS; i++) {
		ide = parked[i];
		if (!ide)
			continue;
		parked[i] = NULL;
		ep = pci_dev_get(ide->pdev);
		t = ktime_get();
		pci_ide_stream_release(ide);
		ide_ev(OP_IDE_RELEASE, ep, NULL, 0, t);
		pci_dev_put(ep);
		n++;
	}
	mutex_unlock(&ide_lock);
	rec("released=%d", n);
	return 0;
}

static int cmd_ide_info(const char *bdf)
{
	struct pci_dev *pdev = lt_lookup_bdf(bdf);
	struct pci_host_bridge *hb;

	if (IS_ERR(pdev))
		return PTR_ERR(pdev);
	hb = pci_find_host_bridge(pdev->bus);
	rec("dev=%s ide_cap=0x%x nr_sel_ide=%u nr_ide_mem=%u nr_link_ide=%u hb=%s hb_nr_streams=%u pf0=%d",
	    pci_name(pdev), pdev->ide_cap, pdev->nr_sel_ide, pdev->nr_ide_mem,
	    pdev->nr_link_ide, dev_name(&hb->dev), hb->nr_ide_streams,
	    is_pci_tsm_pf0(pdev));
	pci_dev_put(pdev);
	return 0;
}

static int cmd_ide_nr_streams(u32 n)
{
	struct pci_dev *pdev;
	struct pci_host_bridge *hb;

	if (!ide_dev[IDE_EP].active)
		return -ENODEV;
	pdev = lt_lookup_bdf(ide_dev[IDE_EP].bdf);
	if (IS_ERR(pdev))
		return PTR_ERR(pdev);
	hb = pci_find_host_bridge(pdev->bus);
	pci_ide_set_nr_streams(hb, n);
	rec("hb=%s nr_streams=%u", dev_name(&hb->dev), hb->nr_ide_streams);
	pci_dev_put(pdev);
	return 0;
}

int lt_ide_cmd(char **argv, int argc)
{
	const char *c = argv[0];
	u32 a;
	int s;

	if (!strcmp(c, "ide_emulate") && argc == 2)
		return cmd_ide_emulate(argv[1]);
	if (!strcmp(c, "ide_secure") && argc == 3) {
		int side = !strcmp(argv[1], "ep") ? IDE_EP :
			   !strcmp(argv[1], "rp") ? IDE_RP : -1;

		if (side < 0 || kstrtou32(argv[2], 0, &a) || a > 1)
			return -EINVAL;
		WRITE_ONCE(ide_dev[side].secure, a);
		rec("side=%s secure=%u", argv[1], a);
		return 0;
	}
	if (!strcmp(c, "ide_nr_streams") && argc == 2) {
		if (kstrtou32(argv[1], 0, &a) || a > 256)
			return -EINVAL;
		return cmd_ide_nr_streams(a);
	}
	if (!strcmp(c, "ide_stream_id") && argc == 2) {
		if (kstrtoint(argv[1], 0, &s))
			return -EINVAL;
		mutex_lock(&ide_lock);
		next_stream_id = s;
		mutex_unlock(&ide_lock);
		rec("stream_id=%d", s);
		return 0;
	}
	if (!strcmp(c, "ide_leak") && argc <= 2) {
		a = 1;
		if (argc == 2 && kstrtou32(argv[1], 0, &a))
			return -EINVAL;
		mutex_lock(&ide_lock);
		leak_count = a;
		mutex_unlock(&ide_lock);
		rec("leak=%u", a);
		return 0;
	}
	if (!strcmp(c, "ide_release") && argc == 1)
		return cmd_ide_release();
	if (!strcmp(c, "ide_info") && argc == 2)
		return cmd_ide_info(argv[1]);
	return -ENOIOCTLCMD;
}

/* Module exit: the wrapped accessors go back (the emulated devices keep their ide_cap). */
void lt_ide_exit(void)
{
	struct pci_bus *bus = NULL;

	cmd_ide_release();
	while ((bus = pci_find_next_bus(bus)) != NULL)
		unwrap_tree(bus);
	n_wrapped = 0;
}
