//! The sysfs snapshot parser: the contents of a `tsm/bound` attribute (a page at most).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsm_trace::sysfs::DeviceState;

fuzz_target!(|data: &[u8]| {
    match DeviceState::parse_bound(data) {
        DeviceState::Bound(name) => {
            assert!(!name.is_empty() && name.trim() == name, "{name:?}");
        }
        DeviceState::Unbound => {
            assert!(String::from_utf8_lossy(data).trim().is_empty());
        }
        DeviceState::Unknown => panic!("parse_bound never says unknown"),
    }
});
