//! The library's error convention, checked on a representative case of each error type: a
//! message says what failed and where, and its cause is its `source()`, not part of its text.
//! `tsm-trace: error:` prints the message and then each cause on a `caused by:` line, so a
//! message that also prints its source shows the cause twice.

use std::error::Error;
use std::io;
use std::path::PathBuf;

use crate::btf::BtfError;
use crate::correlate::state::StateError;
use crate::events::{record, vm_key::KeyError};
use crate::http::{WebConfig, WebConfigError, auth::AuthError};
use crate::privileges::PrivilegeError;
use crate::probes::{ProbeError, pin::PinError, unpin::UnpinError};

/// `e`'s messages, outermost first.
fn messages(e: &dyn Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push(c.to_string());
        cur = c.source();
    }
    out
}

/// Asserts that `e` has a cause, and that none of its first `ours` messages (the levels that
/// are tsm-trace's own errors) repeats the text of a cause below it.
fn check(e: &dyn Error, ours: usize) {
    let m = messages(e);
    assert!(m.len() > ours, "no cause below tsm-trace's errors: {m:?}");
    for (i, msg) in m.iter().take(ours).enumerate() {
        assert!(!msg.is_empty(), "{m:?}");
        for cause in &m[i + 1..] {
            assert!(
                !msg.contains(cause.as_str()),
                "{msg:?} repeats its cause {cause:?} (chain: {m:?})"
            );
        }
    }
}

fn io_err() -> io::Error {
    io::Error::from_raw_os_error(libc::EACCES)
}

fn json_err() -> serde_json::Error {
    serde_json::from_str::<u32>("x").unwrap_err()
}

#[test]
fn probe_errors() {
    check(
        &ProbeError::Object(aya::EbpfError::FileError {
            path: PathBuf::from("/x.o"),
            error: io_err(),
        }),
        1,
    );
    check(
        &ProbeError::Load {
            program: "tsm_bind",
            source: aya::programs::ProgramError::NotLoaded,
        },
        1,
    );
    check(
        &ProbeError::Map {
            name: "OFFSETS",
            source: aya::maps::MapError::InvalidMapType { map_type: 99 },
        },
        1,
    );
    check(
        &ProbeError::Verifier {
            program: "tsm_bind",
            io_error: io_err(),
            verifier_log: "R1 invalid mem access".into(),
        },
        1,
    );
}

#[test]
fn btf_errors() {
    let path = PathBuf::from("/sys/kernel/btf/vmlinux");
    check(
        &BtfError::VmlinuxRead {
            path: path.clone(),
            cause: io_err(),
        },
        1,
    );
    check(
        &BtfError::VmlinuxParse {
            path: path.clone(),
            cause: btf_rs::Error::Format("bad magic".into()),
        },
        1,
    );
    check(
        &BtfError::ModulesDir {
            path,
            cause: io_err(),
        },
        1,
    );
}

#[test]
fn privilege_and_pin_errors() {
    check(
        &PrivilegeError::Unreadable(caps::errors::CapsError::from("capget failed")),
        1,
    );
    let path = PathBuf::from("/sys/fs/bpf/tsm-trace");
    check(
        &PinError::Io {
            what: "creating",
            path: path.clone(),
            source: io_err(),
        },
        1,
    );
    let foreign = UnpinError::Foreign {
        root: path.clone(),
        path: path.join("x/maps/EVENTS"),
        why: "is not a BPF object".into(),
        source: Some(io_err()),
    };
    check(&foreign, 1);
    check(
        &PinError::Layout {
            path: path.join("x"),
            source: Box::new(foreign),
        },
        2,
    );
    check(
        &PinError::Gate {
            path,
            source: aya::maps::MapError::InvalidMapType { map_type: 99 },
        },
        1,
    );
}

#[test]
fn record_errors() {
    let bad_header = record::read_all("hello\n".as_bytes(), "cap.jsonl").unwrap_err();
    check(&bad_header, 1);
    let bad_line = "{\"tsm_trace_record\":2,\"tsm_trace_version\":\"x\"}\n{\"probe\":\"nope\"}\n";
    check(
        &record::read_all(bad_line.as_bytes(), "cap.jsonl").unwrap_err(),
        1,
    );
    // A torn last line is an error of `read_all`, with its parse error as the cause.
    let torn = "{\"tsm_trace_record\":2,\"tsm_trace_version\":\"x\"}\n{\"probe\":";
    check(
        &record::read_all(torn.as_bytes(), "cap.jsonl").unwrap_err(),
        1,
    );
}

#[test]
fn key_and_state_errors() {
    check(
        &KeyError {
            path: PathBuf::from("/run/tsm-trace/vm-key"),
            problem: "cannot be read".into(),
            fix: "remove it",
            source: Some(io_err()),
        },
        1,
    );
    let path = PathBuf::from("/var/lib/tsm-trace/state.json");
    check(
        &StateError::Read {
            path: path.clone(),
            source: io_err(),
        },
        1,
    );
    check(
        &StateError::Malformed {
            moved: path.with_extension("bad"),
            path,
            source: json_err(),
        },
        1,
    );
}

#[test]
fn web_config_errors() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("web.yml");
    let e = WebConfig::load(&missing).unwrap_err();
    assert!(matches!(e, WebConfigError::Read { .. }), "{e:?}");
    check(&e, 1);
    // A file names itself, the key names the problem, the library says what it found.
    let w = |name: &str, body: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, body).unwrap();
        WebConfig::load(&p).unwrap_err()
    };
    for (name, body, ours) in [
        (
            "header.yml",
            "http_server_config:\n  headers:\n    \"a b\": x\n",
            2,
        ),
        (
            "value.yml",
            "http_server_config:\n  headers:\n    X-Frame-Options: \"a\\nb\"\n",
            2,
        ),
        (
            "cert.yml",
            "tls_server_config:\n  cert_file: nonexistent.crt\n  key_file: k\n",
            2,
        ),
        ("hash.yml", "basic_auth_users:\n  prom: notahash\n", 2),
    ] {
        let e = w(name, body);
        assert!(matches!(e, WebConfigError::File { .. }), "{name}: {e:?}");
        check(&e, ours);
    }
    let auth =
        crate::http::auth::BasicAuth::new([("p".into(), "plain".into())].into()).unwrap_err();
    assert!(matches!(auth, AuthError::Hash { .. }), "{auth:?}");
    check(&auth, 1);
}

#[test]
fn timeline_errors() {
    use crate::exporters::timeline::TimelineError;
    check(
        &TimelineError::Create {
            path: "/x/t.json".into(),
            source: io_err(),
        },
        1,
    );
    check(
        &TimelineError::Write {
            path: "/x/t.json".into(),
            source: io_err(),
        },
        1,
    );
}

#[test]
fn otlp_errors() {
    use crate::exporters::otlp::{OtlpError, config};
    let e = config::resolve(Some("ftp://x"), |_| None).unwrap_err();
    let e = OtlpError::from(e);
    check(&e, 1);
    assert!(
        messages(&e)[1].contains("--otlp-endpoint"),
        "{:?}",
        messages(&e)
    );
}
