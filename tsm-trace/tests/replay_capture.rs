//! A capture recorded inside the test VM (Debian 6.1 kernel, stand-in TSM module, session A of
//! `tests/vm/scenarios/probes.sh`) replayed through the correlator: the same attribution and
//! leaks as the live session, with no kernel. Regenerate it from a `cargo xtask vm-test` run
//! (section `record_a.jsonl` of `.vm-cache/runs/*/data.log`) if the record format changes.

use std::io::BufReader;

use tsm_trace::{
    correlate::{Config, LeakReason},
    events::record,
    pipeline::{ReplayOptions, TraceFormat, replay},
};

const CAPTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/standin-6.1.jsonl"
);

fn run(metrics: bool) -> tsm_trace::pipeline::ReplayReport {
    let f = std::fs::File::open(CAPTURE).expect("fixture");
    let (header, events) = record::read_all(BufReader::new(f), CAPTURE).expect("valid capture");
    assert_eq!(header.kernel, "6.1.0-57-amd64");
    assert_eq!(events.len(), 50);
    replay(
        events,
        &ReplayOptions {
            config: Config {
                leak_grace_ns: 1_000_000_000,
                ..Config::default()
            },
            format: TraceFormat::Json,
            filters: Default::default(),
            clock: None,
            realtime_offset_ns: None,
            summary: true,
            metrics,
        },
        Box::new(std::io::sink()),
    )
    .expect("replay")
}

#[test]
fn errors_are_attributed_to_the_layer_that_produced_them() {
    let r = run(true);
    let m = r.metrics.expect("exposition");
    for (op, layer, errno) in [
        ("bind", "iommufd", "EOPNOTSUPP"),
        ("bind", "iommufd", "ENOENT"),
        ("bind", "iommufd", "ENODEV"),
        ("invalid", "iommufd", "EINVAL"),
        ("bind", "tsm_core", "EINVAL"),
        ("bind", "tsm_driver", "EIO"),
        ("bind", "iommufd", "EFAULT"),
        ("bind", "pci_tsm", "EBUSY"),
        ("unbind", "tsm_core", "EINVAL"),
    ] {
        let series = format!(
            "tsm_trace_operations_total{{errno=\"{errno}\",layer=\"{layer}\",op=\"{op}\",result=\"error\"}} 1"
        );
        assert!(m.contains(&series), "missing {series} in\n{m}");
    }
    assert_eq!(r.failures, 9);
}

#[test]
fn leaks_are_found_with_their_reasons() {
    let r = run(false);
    assert_eq!(r.leaks_detected, 4);
    let mut open: Vec<(LeakReason, String)> = r
        .leaks
        .iter()
        .map(|l| (l.reason, l.device.clone()))
        .collect();
    open.sort();
    assert_eq!(
        open,
        vec![
            (LeakReason::VmDestroyed, "0000:00:03.0".to_string()),
            (LeakReason::VmmExited, "0000:00:02.0".to_string()),
        ]
    );
    assert!(
        r.summary
            .contains("leaks: 4 detected, 2 cleared, 2 still leaked"),
        "{}",
        r.summary
    );
}
