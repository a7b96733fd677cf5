// SPDX-License-Identifier: GPL-2.0
/*
 * tsm_standin: the stand-in KVM (struct kvm owned by the creating process, destroyed
 * through kvm_destroy_vm() when its last reference goes) and the vm_create/vm_destroy
 * commands.
 */
#include "standin.h"

/* ---- Stand-in KVM ---- */

static int standin_kvm_release(struct inode *inode, struct file *filp)
{
	return 0;
}

static const struct file_operations standin_kvm_fops = {
	.owner = THIS_MODULE,
	.release = standin_kvm_release,
	.llseek = noop_llseek,
};

noinline void kvm_destroy_vm(struct kvm *kvm)
{
	rec("destroyed_kvm=0x%px destroyed_kvm_pid=%d", kvm, kvm->userspace_pid);
	kvm->vm_dead = true;
	kfree(kvm);
}
EXPORT_SYMBOL_GPL(kvm_destroy_vm);

struct standin_vm *standin_find_vm(unsigned int id)
{
	struct standin_vm *vm;

	list_for_each_entry(vm, &standin_vms, node)
		if (vm->id == id && !vm->handle_dropped)
			return vm;
	return NULL;
}

void standin_vm_put(struct standin_vm *vm)
{
	struct file *filp;

	if (!refcount_dec_and_test(&vm->refs)) {
		rec("destroyed=0");
		return;
	}
	list_del(&vm->node);
	filp = vm->filp;
	filp->private_data = NULL;
	kvm_destroy_vm(vm->kvm);
	rec("destroyed=1");
	fput(filp);
	kfree(vm);
}

int standin_cmd_vm_create(unsigned int id)
{
	struct standin_vm *vm;
	struct kvm *kvm;

	rec("vm=%u", id);
	if (standin_find_vm(id))
		return -EEXIST;
	vm = kzalloc(sizeof(*vm), GFP_KERNEL);
	kvm = kzalloc(sizeof(*kvm), GFP_KERNEL);
	if (!vm || !kvm) {
		kfree(vm);
		kfree(kvm);
		return -ENOMEM;
	}
	spin_lock_init(&kvm->mmu_lock);
	mutex_init(&kvm->slots_lock);
	refcount_set(&kvm->users_count, 1);
	kvm->userspace_pid = task_tgid_nr(current);
	snprintf(kvm->stats_id, sizeof(kvm->stats_id), "kvm-%d",
		 kvm->userspace_pid);
	vm->filp = anon_inode_getfile("kvm-vm", &standin_kvm_fops, kvm, O_RDWR);
	if (IS_ERR(vm->filp)) {
		int rc = PTR_ERR(vm->filp);

		kfree(vm);
		kfree(kvm);
		return rc;
	}
	vm->id = id;
	vm->kvm = kvm;
	refcount_set(&vm->refs, 1);
	list_add_tail(&vm->node, &standin_vms);
	standin_rec_kvm("", kvm);
	return 0;
}

int standin_cmd_vm_destroy(unsigned int id)
{
	struct standin_vm *vm = standin_find_vm(id);

	rec("vm=%u", id);
	if (!vm)
		return -ENOENT;
	standin_rec_kvm("", vm->kvm);
	vm->handle_dropped = true;
	standin_vm_put(vm);
	return 0;
}
