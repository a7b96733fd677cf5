// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_standin: many calls from one ctl command: storm (bind+unbind pairs in an
 * in-kernel loop) and parallel (n kernel threads in the driver's bind op at once).
 */
#include "standin.h"

/*
 * storm <vdev> <n> [gap_us]: n bind+unbind pairs from inside the kernel (one write), the same
 * path as the ioctl; back to back, or with the writer asleep gap_us (an hrtimer sleep: the
 * CPU is free for a reader meanwhile) after each pair, for a steady rate. Records how many of
 * each succeeded or failed (and with what), and the whole write's duration, sleeps included.
 */
int standin_cmd_storm(unsigned int vdev_id, u32 n, u32 gap_us, const char __user *ubuf)
{
	struct iommu_vdevice_tsm_op cmd = {
		.size = sizeof(cmd),
		.vdevice_id = vdev_id,
	};
	struct iommufd_ucmd ucmd = {
		.ictx = &standin_ictx,
		.ubuffer = (void __user *)ubuf,
		.user_size = sizeof(cmd),
		.cmd = &cmd,
	};
	u32 i, bind_ok = 0, bind_err = 0, unbind_ok = 0, unbind_err = 0;
	int last_bind_rc = 0, last_unbind_rc = 0;
	ktime_t start = ktime_get();

	for (i = 0; i < n; i++) {
		int rc;

		STANDIN_SET_CMD_OP(&cmd, IOMMU_VDEVICE_TSM_BIND);
		rc = iommufd_vdevice_tsm_op_ioctl(&ucmd);
		if (rc) {
			bind_err++;
			last_bind_rc = rc;
		} else {
			bind_ok++;
		}
		STANDIN_SET_CMD_OP(&cmd, IOMMU_VDEVICE_TSM_UNBIND);
		rc = iommufd_vdevice_tsm_op_ioctl(&ucmd);
		if (rc) {
			unbind_err++;
			last_unbind_rc = rc;
		} else {
			unbind_ok++;
		}
		if (gap_us)
			usleep_range(gap_us, gap_us);
		else
			cond_resched();
	}
	/* Only the tally: the calls' own records would overflow the buffer. */
	standin_rec_reset();
	rec("n=%u gap_us=%u bind_ok=%u bind_err=%u unbind_ok=%u unbind_err=%u bind_rc=%d unbind_rc=%d duration_ns=%lld",
	    n, gap_us, bind_ok, bind_err, unbind_ok, unbind_err, last_bind_rc,
	    last_unbind_rc, ktime_to_ns(ktime_sub(ktime_get(), start)));
	return 0;
}

/*
 * parallel <vdev> <n>: n kernel threads call the driver's bind op at the same moment (each
 * sleeps delay_us inside it), so n calls are in flight at once: more than a kretprobe's
 * default maxactive (max(10, 2 * CPUs)). The threads exit when their call returns. Records
 * how many started, returned and succeeded: the calls really made, whatever a probe saw.
 */
struct parallel_run {
	struct pci_dev *pdev;
	struct kvm *kvm;
	struct completion go;
	struct completion all_done;
	atomic_t left;
	atomic_t returned;
	atomic_t ok;
};

static int parallel_thread(void *data)
{
	struct parallel_run *run = data;
	void *tdi;

	wait_for_completion(&run->go);
	tdi = standin_tdi_bind(run->pdev, run->kvm, 0);
	atomic_inc(&run->returned);
	if (!IS_ERR(tdi)) {
		atomic_inc(&run->ok);
		kfree(tdi);
	}
	if (atomic_dec_and_test(&run->left))
		complete(&run->all_done);
	return 0;
}

int standin_cmd_parallel(unsigned int vdev_id, u32 n)
{
	struct standin_vdev *sv = standin_find_vdev(vdev_id);
	struct parallel_run *run;
	ktime_t start;
	u32 i, started = 0;

	if (!sv || !sv->pdev || !sv->vm || n == 0 || n > 1024)
		return -EINVAL;
	run = kzalloc(sizeof(*run), GFP_KERNEL);
	if (!run)
		return -ENOMEM;
	run->pdev = sv->pdev;
	run->kvm = sv->vm->kvm;
	init_completion(&run->go);
	init_completion(&run->all_done);
	atomic_set(&run->left, n);
	for (i = 0; i < n; i++) {
		struct task_struct *t = kthread_run(parallel_thread, run,
						    "standin_par/%u", i);
		if (IS_ERR(t))
			break;
		started++;
	}
	/* Threads never started count as done. */
	if (started < n && atomic_sub_and_test(n - started, &run->left))
		complete(&run->all_done);
	start = ktime_get();
	complete_all(&run->go);
	if (started)
		wait_for_completion(&run->all_done);
	/* Only the tally: the calls' own records would overflow the buffer. */
	standin_rec_reset();
	rec("n=%u started=%u returned=%d ok=%d delay_us=%lu duration_ns=%lld", n,
	    started, atomic_read(&run->returned), atomic_read(&run->ok),
	    standin_bind_delay_us, ktime_to_ns(ktime_sub(ktime_get(), start)));
	kfree(run);
	return 0;
}
