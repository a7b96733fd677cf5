/* SPDX-License-Identifier: GPL-2.0 */
/*
 * linktsm.h - private header of the tsm_linktsm fixture (tsm_linktsm.ko, built from the
 * linktsm_*.c files: see linktsm_main.c for what the module is and how it is driven).
 *
 *   linktsm_ops.c   the link ops (probe targets), their injections and delays
 *   linktsm_tee.c   TEE marking of PCIe devices (the device emulation), BDF lookup
 *   linktsm_cmds.c  the ctl commands and their parser
 *   linktsm_ide.c   PCIe IDE: register emulation, the kernel's pci_ide_* from connect
 *   linktsm_spdm.c  a stand-in SPDM session from connect: lt_spdm_* helpers (deep-trace
 *                   targets) and their injection
 *   linktsm_main.c  module parameters, locks, logs, debugfs files, init/exit
 *
 * Functions and state shared between the files are global; the ones that are not probe
 * targets carry an lt_ prefix so they never shadow a kernel symbol.
 */
#ifndef LINKTSM_H
#define LINKTSM_H

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/debugfs.h>
#include <linux/pci.h>
#include <linux/pci-tsm.h>
#include <linux/tsm.h>
#include <linux/device/faux.h>
#include <linux/slab.h>
#include <linux/delay.h>
#include <linux/ktime.h>
#include <linux/mutex.h>
#include <linux/uaccess.h>
#include <linux/err.h>
#include <linux/sched.h>
#include <linux/sockptr.h>
#include <linux/string.h>
#include <linux/atomic.h>

#ifndef CONFIG_PCI_TSM
#error "tsm_linktsm needs CONFIG_PCI_TSM"
#endif

/* ---- Exported link ops (probe targets) ---- */

struct pci_tsm *linktsm_probe(struct tsm_dev *tsm_dev, struct pci_dev *pdev);
void linktsm_remove(struct pci_tsm *tsm);
int linktsm_connect(struct pci_dev *pdev);
void linktsm_disconnect(struct pci_dev *pdev);
struct pci_tdi *linktsm_bind(struct pci_dev *pdev, struct kvm *kvm, u32 tdi_id);
void linktsm_unbind(struct pci_tdi *tdi);
ssize_t linktsm_guest_req(struct pci_tdi *tdi, enum pci_tsm_req_scope scope,
			  sockptr_t req_in, size_t in_len, sockptr_t req_out,
			  size_t out_len, u64 *tsm_code);

enum lt_op {
	OP_PROBE,
	OP_REMOVE,
	OP_CONNECT,
	OP_DISCONNECT,
	OP_BIND,
	OP_UNBIND,
	OP_GUEST_REQ,
	/* The kernel's pci_ide_* as the link TSM calls them (linktsm_ide.c). */
	OP_IDE_ALLOC,
	OP_IDE_SETUP,
	OP_IDE_ENABLE,
	OP_IDE_REGISTER,
	OP_IDE_DISABLE,
	OP_IDE_UNREGISTER,
	OP_IDE_TEARDOWN,
	OP_IDE_FREE,
	OP_IDE_RELEASE,
	/* The SPDM session's helpers inside connect (linktsm_spdm.c). */
	OP_SPDM_SESSION,
	OP_SPDM_EXCHANGE,
	OP_SPDM_RECV,
	OP_SPDM_VERIFY,
	OP_NR,
};

extern const char *const lt_op_names[OP_NR];

/* Ops with a result that can be injected. */
static inline bool op_injectable(int op)
{
	return op == OP_PROBE || op == OP_CONNECT || op == OP_BIND ||
	       op == OP_GUEST_REQ;
}

/* guest_req buffers: the most a request or response may carry. */
#define GR_MAX 4096

/* ---- Shared state ---- */

/* linktsm_main.c; st_lock: injections, delays, counters and the logs (see there). */
extern struct mutex lt_st_lock;
extern struct faux_device *lt_parent;
extern struct tsm_dev *lt_tsm;
/* linktsm_ops.c */
extern struct pci_tsm_ops linktsm_ops;
extern int lt_inj_errno[OP_NR];
extern unsigned int lt_inj_count[OP_NR];
extern unsigned long lt_delay_us[OP_NR];
extern size_t lt_residue_cfg;
extern u64 lt_tsm_code_cfg;
extern atomic_t lt_n_contexts;
extern atomic_t lt_n_tdis;
/* linktsm_tee.c: devices this module marked TEE-capable */
extern struct pci_dev *lt_tee_devs[];
extern int lt_n_tee;

/* The TSM a device's context belongs to, or NULL (for the logs). */
static inline struct tsm_dev *tsm_of(struct pci_dev *pdev)
{
	return pdev && pdev->tsm ? pdev->tsm->tsm_dev : NULL;
}

/* ---- Logs (linktsm_main.c) ---- */

void lt_errname(char *buf, size_t size, long rc);
__printf(6, 7) void lt_ev(int op, struct pci_dev *pdev, struct tsm_dev *tsm_dev, long rc,
			  s64 ns, const char *fmt, ...);
__printf(1, 2) void lt_rec(const char *fmt, ...);
#define rec(...) lt_rec(__VA_ARGS__)
void lt_events_clear(void);

/* ---- TEE marking (linktsm_tee.c) ---- */

int lt_tee_find(struct pci_dev *pdev);
int lt_tee_mark(struct pci_dev *pdev);
void lt_tee_unmark(int i);
struct pci_dev *lt_lookup_bdf(const char *name);
void lt_tee_from_param(void);

/* ---- IDE (linktsm_ide.c) ---- */

int lt_ide_connect(struct pci_dev *pdev);
void lt_ide_disconnect(struct pci_dev *pdev);
int lt_ide_cmd(char **argv, int argc);
void lt_ide_exit(void);

/* ---- SPDM session (linktsm_spdm.c): global, noinline, the deep trace's targets ---- */

int lt_spdm_session(struct pci_dev *pdev);
int lt_spdm_exchange(struct pci_dev *pdev, int msg);
int lt_spdm_recv(struct pci_dev *pdev, int msg);
int lt_spdm_verify(struct pci_dev *pdev, int msg);
int lt_spdm_notrace(struct pci_dev *pdev);
int lt_cmd_spdm_fail(char **argv, int argc);
int lt_cmd_spdm_run(char **argv, int argc);

/* ---- Commands (linktsm_cmds.c) ---- */

int lt_do_register(void);
int lt_run_cmd(char **argv, int argc);

#endif /* LINKTSM_H */
