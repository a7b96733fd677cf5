//! Every flag and `TSM_TRACE_*` value parser: any text is a value or a message, never a
//! panic; what is accepted is in range and, where the parser normalises, parses again to
//! itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsm_trace::cli::parse;
use tsm_trace::events::VmSelector;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse::duration(s) {
        assert!(d <= parse::MAX_DURATION);
        let _ = d.as_nanos() as u64;
    }
    if let Ok(d) = parse::timeout(s) {
        assert!(!d.is_zero());
    }
    let _ = parse::level(s);
    if let Ok(p) = parse::probe(s) {
        assert_eq!(p.as_str(), s);
    }
    if let Ok(f) = parse::function(s) {
        assert_eq!(parse::function(&f), Ok(f.clone()));
    }
    let _ = parse::symbol(s);
    if let Ok(n) = parse::ringbuf(s) {
        assert!(n.is_power_of_two() && (4096..=parse::MAX_RINGBUF).contains(&n));
    }
    if let Ok(n) = parse::max_bindings(s) {
        assert!((1..=parse::MAX_BINDINGS).contains(&n));
    }
    if let Ok(n) = parse::max_connections(s) {
        assert!((1..=parse::MAX_CONNECTIONS).contains(&n));
    }
    if let Ok(b) = parse::bdf(s) {
        assert_eq!(parse::bdf(&b), Ok(b.clone()), "{s:?}");
    }
    match parse::vm(s) {
        Ok(VmSelector::Pid(p)) => assert!(p > 0 && i32::try_from(p).is_ok()),
        Ok(VmSelector::Id(id)) => assert_eq!(parse::vm(&id.to_string()), Ok(VmSelector::Id(id))),
        Err(e) => assert!(!e.is_empty()),
    }
    if let Ok(p) = parse::state_file(s) {
        assert!(p.is_absolute());
    }
    if let Ok(e) = parse::errno(s) {
        assert!((1..=4095).contains(&e), "{s:?} → {e}");
    }
    // Host names other than localhost are refused without a lookup.
    let _ = parse::listen(s);
    let _ = parse::unknown_env(
        s.split('\n').map(str::to_string),
        &["TSM_TRACE_GRACE", "TSM_TRACE_LISTEN"],
    );
});
