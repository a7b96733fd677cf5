//! The in-flight table's key and the control ring's records (module loads and frees).

/// Key of an in-flight call in `INFLIGHT`: one entry per (task, probed function). Userspace
/// reads the table to know which binds and unbinds are still running.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InflightKey {
    pub pid_tgid: u64,
    pub probe: u32,
    pub _pad: u32,
}

/// Longest module name a [`ControlEvent`] carries (the kernel's `MODULE_NAME_LEN`).
pub const MODULE_NAME_LEN: usize = 56;

/// What a [`ControlEvent`] reports.
pub mod control {
    /// A module finished loading (`module_load`): probe targets may have appeared.
    pub const MODULE_LOAD: u32 = 1;
    /// A module is being freed (`module_free`): probes in it stop firing.
    pub const MODULE_FREE: u32 = 2;
}

/// A control record, on its own ring buffer (`CONTROL`), never mixed with the event data:
/// module loads and unloads, which make userspace attach or detach probes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlEvent {
    /// [`control::MODULE_LOAD`] or [`control::MODULE_FREE`].
    pub kind: u32,
    /// 1 when `name` could be read (`module.name` resolved and the read did not fault).
    pub has_name: u32,
    pub ktime_ns: u64,
    /// NUL-terminated module name.
    pub name: [u8; MODULE_NAME_LEN],
}
