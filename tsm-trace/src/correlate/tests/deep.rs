//! `trace --deep`: an operation collects the deep calls its frames carry, by start time, and
//! names the origin of its errno with the stack taken there.

use super::lifecycle_tests::{dev_frame, ops, run};
use super::*;
use crate::events::ProbeId;
use crate::events::deep::DeepCall;

fn call(f: &str, depth: u32, start: u64, end: u64, errno: Option<i32>, stack: &[&str]) -> DeepCall {
    DeepCall::test(f, depth, (start, end), errno, stack)
}

const EPROTO: i32 = 71;

/// A failed connect: driver_connect carries session > exchange > recv > verify (return
/// order), verify failed with EPROTO first, its callers passed it on.
#[test]
fn the_first_call_to_return_the_errno_is_the_origin() {
    let mut c = Correlator::default();
    let mut d = dev_frame(ProbeId::DriverConnect, 100, 900, Some(-i64::from(EPROTO)));
    d.calls = vec![
        call(
            "lt_spdm_verify",
            4,
            300,
            400,
            Some(EPROTO),
            &["lt_spdm_verify", "lt_spdm_recv+0x1e"],
        ),
        call("lt_spdm_recv", 3, 250, 450, Some(EPROTO), &[]),
        // A sibling that failed otherwise earlier and was handled: not the origin.
        call(
            "lt_spdm_probe_cap",
            2,
            150,
            200,
            Some(5),
            &["lt_spdm_probe_cap"],
        ),
        call("lt_spdm_exchange", 2, 220, 500, Some(EPROTO), &[]),
        call("lt_spdm_session", 1, 120, 800, Some(EPROTO), &[]),
    ];
    let s = dev_frame(ProbeId::Connect, 0, 1_000, Some(-i64::from(EPROTO)));
    let out = run(&mut c, vec![d, s]);
    let op = ops(&out)[0];
    let order: Vec<&str> = op.calls().iter().map(|c| c.function.as_str()).collect();
    assert_eq!(
        order,
        [
            "lt_spdm_session",
            "lt_spdm_probe_cap",
            "lt_spdm_exchange",
            "lt_spdm_recv",
            "lt_spdm_verify"
        ]
    );
    let o = op.origin().expect("an origin");
    assert_eq!(
        (o.function.as_str(), o.depth, o.errno),
        ("lt_spdm_verify", 4, EPROTO)
    );
    assert_eq!(o.stack, ["lt_spdm_verify", "lt_spdm_recv+0x1e"]);
    // One stack per operation, at its origin.
    assert!(op.calls().iter().all(|c| c.stack.is_empty()));
    let json = serde_json::to_value(op).unwrap();
    assert_eq!(json["origin"]["errno"], "EPROTO");
    assert_eq!(json["calls"][4]["errno"], "EPROTO");
    assert!(json["calls"][0].get("stack").is_none());
    let line =
        crate::exporters::trace::TraceFormatter::new(crate::clock::Clock::Boot).operation(op);
    assert!(line.contains("origin=lt_spdm_verify"), "{line}");
    assert!(
        line.contains("\n          lt_spdm_verify 100ns EPROTO  <- origin"),
        "{line}"
    );
    assert!(line.contains("\n      lt_spdm_recv+0x1e"), "{line}");
}

#[test]
fn no_origin_without_a_failure_or_a_call_that_returned_it() {
    let mut c = Correlator::default();
    let mut d = dev_frame(ProbeId::DriverConnect, 100, 900, Some(0));
    d.calls = vec![call("lt_spdm_session", 1, 120, 800, None, &[])];
    let s = dev_frame(ProbeId::Connect, 0, 1_000, Some(5));
    let out = run(&mut c, vec![d, s]);
    assert!(ops(&out)[0].origin().is_none());
    assert_eq!(ops(&out)[0].calls().len(), 1);
    // An errno no deep call returned (it began in a probed frame): no origin either.
    let mut d = dev_frame(ProbeId::DriverConnect, 1_100, 1_900, Some(-5));
    d.calls = vec![call(
        "lt_spdm_session",
        1,
        1_120,
        1_800,
        Some(EPROTO),
        &["x"],
    )];
    let s = dev_frame(ProbeId::Connect, 1_000, 2_000, Some(-5));
    let out = run(&mut c, vec![d, s]);
    assert!(ops(&out)[0].origin().is_none());
}
