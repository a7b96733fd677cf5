// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_latemod: a module that is loaded and unloaded while tsm-trace runs (the module VM
 * suite, tests/vm/scenarios/modules.sh). It defines one function with the prototype of a
 * TSM driver's link `connect` op, which tsm-trace probes as `--driver-connect
 * latemod_connect`: the probe must attach when the module loads, be reported detached when
 * it is unloaded, and fire exactly once per call after every reload.
 *
 * debugfs /sys/kernel/debug/tsm_latemod/:
 *   call   write N: call latemod_connect(pdev) N times with the first PCI device
 *   last   "calls=<total this load> dev=<dev_name or none> rc=<rc>" of the last write
 */
#include <linux/debugfs.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/uaccess.h>

static struct dentry *dir;
static unsigned long calls;
static char last[128] = "calls=0 dev=none rc=0";

int latemod_connect(struct pci_dev *pdev);

/* The probed function: never inlined, so the kprobe has a call to fire on. */
noinline int latemod_connect(struct pci_dev *pdev)
{
	calls++;
	return pdev ? 0 : -ENODEV;
}
EXPORT_SYMBOL_GPL(latemod_connect);

static ssize_t call_write(struct file *f, const char __user *ubuf, size_t len,
			  loff_t *ppos)
{
	struct pci_dev *pdev;
	unsigned int n, i;
	int rc = 0;

	if (kstrtouint_from_user(ubuf, len, 10, &n) || n > 100000)
		return -EINVAL;
	pdev = pci_get_device(PCI_ANY_ID, PCI_ANY_ID, NULL);
	for (i = 0; i < n; i++)
		rc = latemod_connect(pdev);
	snprintf(last, sizeof(last), "calls=%lu dev=%s rc=%d", calls,
		 pdev ? pci_name(pdev) : "none", rc);
	pci_dev_put(pdev);
	return len;
}

static ssize_t last_read(struct file *f, char __user *ubuf, size_t len,
			 loff_t *ppos)
{
	char buf[140];
	int n = scnprintf(buf, sizeof(buf), "%s\n", last);

	return simple_read_from_buffer(ubuf, len, ppos, buf, n);
}

static const struct file_operations call_fops = {
	.owner = THIS_MODULE,
	.write = call_write,
};

static const struct file_operations last_fops = {
	.owner = THIS_MODULE,
	.read = last_read,
};

static int __init latemod_init(void)
{
	dir = debugfs_create_dir("tsm_latemod", NULL);
	debugfs_create_file("call", 0200, dir, NULL, &call_fops);
	debugfs_create_file("last", 0400, dir, NULL, &last_fops);
	return 0;
}

static void __exit latemod_exit(void)
{
	debugfs_remove_recursive(dir);
}

module_init(latemod_init);
module_exit(latemod_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tsm-trace test fixture: a module loaded and unloaded while tracing");
