//! [`Control`]: a record of the control ring buffer (module loads and unloads), decoded.

use tsm_trace_common::{ControlEvent, control};

/// A module load or unload, from the control ring buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    ModuleLoaded { name: Option<String> },
    ModuleFreed { name: Option<String> },
}

impl Control {
    /// Decodes a control record; `None` for a record of the wrong size or kind.
    pub fn from_bytes(b: &[u8]) -> Option<Control> {
        if b.len() < core::mem::size_of::<ControlEvent>() {
            return None;
        }
        // SAFETY: size checked; ControlEvent is plain data, read unaligned.
        let ev: ControlEvent = unsafe { core::ptr::read_unaligned(b.as_ptr().cast()) };
        let name = (ev.has_name == 1).then(|| {
            let end = ev
                .name
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(ev.name.len());
            String::from_utf8_lossy(&ev.name[..end]).into_owned()
        });
        match ev.kind {
            control::MODULE_LOAD => Some(Control::ModuleLoaded { name }),
            control::MODULE_FREE => Some(Control::ModuleFreed { name }),
            _ => None,
        }
    }
}
