//! One VM, one name; one vdevice, one device.
//!
//! The kernel names a VM by its `struct kvm *`, which the decoder turns into a [`VmId`]
//! (`events/vm_id.rs`, keyed by `events/vm_key.rs`), plus the VMM pid and `stats_id` where the
//! probe can read them. Frames that reach the VM through `pci_tdi.kvm` (PCI TSM core, TSM
//! driver) often see the pointer only, so the same VM would print as `kvm-134` on a bind and
//! as `vm#fc8fbb59739a` on its unbind. The correlator remembers the first full name it
//! learned for each [`VmId`] and gives it to every later operation and VM event of that VM;
//! it forgets it when the VM is destroyed (the kernel may reuse the pointer).
//!
//! Likewise the device behind a VMM's vdevice id, learned from an operation that saw both
//! (a bind's inner frames), names the device of a later operation that could not read it (a
//! failed ioctl before any inner call); it is forgotten when the vdevice is torn down.

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxBuildHasher as FxBuild;

use crate::events::{Name, Vm, VmId};

/// Names kept at once (oldest forgotten first).
const MAX: usize = 4_096;

#[derive(Debug, Default)]
pub(super) struct Names {
    vms: HashMap<VmId, Vm, FxBuild>,
    vm_order: VecDeque<VmId>,
    vdevices: HashMap<(u32, u32), Name, FxBuild>,
    vdevice_order: VecDeque<(u32, u32)>,
}

/// Does this name say more than the hash (a VMM pid, a stats id)?
pub(super) fn is_full(vm: &Vm) -> bool {
    vm.pid.is_some_and(|p| p > 0) || vm.stats_id.as_deref().is_some_and(|s| !s.is_empty())
}

fn bounded_insert<K: Copy + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V, FxBuild>,
    order: &mut VecDeque<K>,
    k: K,
    v: V,
) {
    if map.len() >= MAX {
        while let Some(old) = order.pop_front() {
            if map.remove(&old).is_some() {
                break;
            }
        }
    }
    if map.insert(k, v).is_none() {
        order.push_back(k);
    }
    if order.len() > 2 * MAX {
        order.retain(|k| map.contains_key(k));
    }
}

impl Names {
    /// Remembers `vm`'s name if it is full and the first one seen for its id.
    pub(super) fn learn(&mut self, vm: &Vm) {
        if !is_full(vm) {
            return;
        }
        match self.vms.get_mut(&vm.id) {
            // The VMM's name comes with binds only, read from the binding VMM's argv: the
            // newest one is kept (a VM first seen otherwise learns it then).
            Some(known) => {
                if vm.vmm.is_some() && known.vmm != vm.vmm {
                    known.vmm.clone_from(&vm.vmm);
                }
            }
            None => bounded_insert(&mut self.vms, &mut self.vm_order, vm.id, vm.clone()),
        }
    }

    /// Gives `vm` the name first learned for its id (and the VMM's name last learned, unless
    /// its own bind read one).
    pub(super) fn fill(&self, vm: &mut Vm) {
        if let Some(known) = self.vms.get(&vm.id) {
            vm.pid = known.pid;
            vm.stats_id.clone_from(&known.stats_id);
            if vm.vmm.is_none() {
                vm.vmm.clone_from(&known.vmm);
            }
        }
    }

    pub(super) fn forget_vm(&mut self, id: VmId) {
        self.vms.remove(&id);
    }

    /// The VM whose VMM is `pid`, if exactly one such VM is known.
    pub(super) fn by_pid(&self, pid: u32) -> Option<&Vm> {
        let pid = i32::try_from(pid).ok()?;
        let mut it = self.vms.values().filter(|v| v.pid == Some(pid));
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }

    pub(super) fn learn_vdevice(&mut self, tgid: u32, vdevice: u32, device: &str) {
        if self.vdevices.get(&(tgid, vdevice)).map(|d| &**d) != Some(device) {
            bounded_insert(
                &mut self.vdevices,
                &mut self.vdevice_order,
                (tgid, vdevice),
                device.into(),
            );
        }
    }

    pub(super) fn vdevice(&self, tgid: u32, vdevice: u32) -> Option<&Name> {
        self.vdevices.get(&(tgid, vdevice))
    }

    pub(super) fn forget_vdevice(&mut self, tgid: u32, vdevice: u32) {
        self.vdevices.remove(&(tgid, vdevice));
    }
}
