// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_linktsm: a stand-in SPDM session, the driver-internal work a real link TSM does
 * inside its connect op, as a chain of helpers for tsm-trace's deep trace
 * (`trace --deep 'tsm_linktsm:lt_spdm_*'`) to probe below the link op:
 *
 *   linktsm_connect()                   the link op (linktsm_ops.c)
 *     lt_spdm_session(pdev)             depth 1
 *       lt_spdm_notrace(pdev)           notrace: in kallsyms, not in
 *                                       available_filter_functions (not attachable)
 *       lt_spdm_exchange(pdev, msg)     depth 2; msg 1 = GET_VERSION, then 2 = KEY_EXCHANGE
 *         lt_spdm_recv(pdev, msg)       depth 3
 *           lt_spdm_verify(pdev, msg)   depth 4
 *
 * Each returns 0 or a negative errno and passes its child's error up unchanged; the
 * session stops at the first failed message. They are global (neither static nor
 * exported) and noinline __noipa, so each keeps its own symbol and its own calls: never
 * inlined, never an .isra/.constprop clone a glob would miss, and no caller assumes what a
 * callee returns (lt_spdm_notrace always returns 0: without noipa, GCC may drop its call).
 * None ends in a tail call (each logs its event after its child returned), so every
 * caller's frame is on the stack of the deepest one.
 *
 * ctl spdm_fail <depth> <errno> [count]: the helper at <depth> (1..4) returns -<errno>
 * instead of calling its child, for its next <count> calls (default 1); the helpers above
 * pass it up, so the connect fails with it. The session stops at its first failed message,
 * so at depth 2..4 it is message 1 that fails. `spdm_fail 0 0` clears.
 *
 * Events (linktsm_main.c): one per helper call, logged at the helper's return (so the log
 * lists a session deepest first): op=spdm_session|spdm_exchange|spdm_recv|spdm_verify,
 * rc/err as returned (%pe), ns = the helper's own duration, depth=<1..4> msg=<1|2> (0 for
 * the session).
 *
 * No other symbol of the module starts with lt_spdm_ (the state and the command below are
 * named otherwise): `lt_spdm_*` matches exactly these five functions.
 */
#include "linktsm.h"

enum { SPDM_GET_VERSION = 1, SPDM_KEY_EXCHANGE = 2 };

/* The injection (ctl spdm_fail), under lt_st_lock. */
static int fail_depth, fail_errno;
static unsigned int fail_count;

/* -errno if the helper at @depth fails now (one call of the injection's count), else 0. */
static int spdm_injected(int depth)
{
	int rc = 0;

	mutex_lock(&lt_st_lock);
	if (fail_count && fail_depth == depth) {
		fail_count--;
		rc = -fail_errno;
	}
	mutex_unlock(&lt_st_lock);
	return rc;
}

static void spdm_ev(int op, struct pci_dev *pdev, int rc, ktime_t start,
		    int depth, int msg)
{
	lt_ev(op, pdev, tsm_of(pdev), rc,
	      ktime_to_ns(ktime_sub(ktime_get(), start)), " depth=%d msg=%d",
	      depth, msg);
}

notrace noinline __noipa int lt_spdm_notrace(struct pci_dev *pdev)
{
	return 0;
}

noinline __noipa int lt_spdm_verify(struct pci_dev *pdev, int msg)
{
	ktime_t start = ktime_get();
	int rc = spdm_injected(4);

	spdm_ev(OP_SPDM_VERIFY, pdev, rc, start, 4, msg);
	return rc;
}

noinline __noipa int lt_spdm_recv(struct pci_dev *pdev, int msg)
{
	ktime_t start = ktime_get();
	int rc = spdm_injected(3);

	if (!rc)
		rc = lt_spdm_verify(pdev, msg);
	spdm_ev(OP_SPDM_RECV, pdev, rc, start, 3, msg);
	return rc;
}

noinline __noipa int lt_spdm_exchange(struct pci_dev *pdev, int msg)
{
	ktime_t start = ktime_get();
	int rc = spdm_injected(2);

	if (!rc)
		rc = lt_spdm_recv(pdev, msg);
	spdm_ev(OP_SPDM_EXCHANGE, pdev, rc, start, 2, msg);
	return rc;
}

noinline __noipa int lt_spdm_session(struct pci_dev *pdev)
{
	ktime_t start = ktime_get();
	int rc = spdm_injected(1);

	if (!rc)
		rc = lt_spdm_notrace(pdev);
	if (!rc)
		rc = lt_spdm_exchange(pdev, SPDM_GET_VERSION);
	if (!rc)
		rc = lt_spdm_exchange(pdev, SPDM_KEY_EXCHANGE);
	spdm_ev(OP_SPDM_SESSION, pdev, rc, start, 1, 0);
	return rc;
}

/* ctl spdm_fail <depth> <errno> [count] (argv[0] = "spdm_fail"). */
int lt_cmd_spdm_fail(char **argv, int argc)
{
	unsigned int count = 1;
	int depth, e;

	if (argc != 3 && argc != 4)
		return -EINVAL;
	if (kstrtoint(argv[1], 0, &depth) || kstrtoint(argv[2], 0, &e))
		return -EINVAL;
	if (argc == 4 && kstrtouint(argv[3], 0, &count))
		return -EINVAL;
	e = abs(e);
	if (depth == 0 && e == 0) {
		count = 0;
	} else if (depth < 1 || depth > 4 || e == 0 || e >= MAX_ERRNO) {
		return -EINVAL;
	}
	mutex_lock(&lt_st_lock);
	fail_depth = depth;
	fail_errno = e;
	fail_count = count;
	mutex_unlock(&lt_st_lock);
	rec("depth=%d errno=%d count=%u", depth, -e, count);
	return 0;
}

/*
 * ctl spdm_run <bdf>: the SPDM chain called from the ctl write itself, outside any TSM
 * operation: a deep trace must record none of these calls (its per-thread gate is closed).
 */
int lt_cmd_spdm_run(char **argv, int argc)
{
	struct pci_dev *pdev;
	int rc;

	if (argc != 2)
		return -EINVAL;
	pdev = lt_lookup_bdf(argv[1]);
	if (IS_ERR(pdev))
		return PTR_ERR(pdev);
	rc = lt_spdm_session(pdev);
	rec("dev=%s rc=%d outside a TSM operation", pci_name(pdev), rc);
	pci_dev_put(pdev);
	return 0;
}
