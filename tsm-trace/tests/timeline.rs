//! `replay --timeline FILE` of every capture in the repository: the file is trace-event JSON
//! (what ui.perfetto.dev and chrome://tracing open) and its slices are the capture's frames,
//! as `replay --json` shows them: same count, names, layers, start times and durations, to
//! the nanosecond; its instant events are the leaks and closed bindings.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tsm-trace");

/// Every capture in the repository: the fixtures and the fuzz corpus's records.
fn captures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut v = Vec::new();
    for dir in ["tsm-trace/tests/fixtures", "fuzz/corpus/record"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "jsonl") {
                v.push(p);
            }
        }
    }
    v.sort();
    assert!(v.len() >= 5, "captures: {v:?}");
    v
}

fn replay(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("replay")
        .args(args)
        .env_remove("TSM_TRACE_LOG")
        .output()
        .unwrap()
}

/// `ts`/`dur` µs (three decimals) back to ns. The captures' times are far below 2^53 ns, so
/// the f64 holds the exact value.
fn ns(v: &Value) -> u64 {
    let us = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    (us * 1000.0).round() as u64
}

#[test]
fn timeline_slices_are_the_captures_frames() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut total_slices = 0;
    for cap in captures() {
        let name = cap.file_name().unwrap().to_string_lossy().into_owned();
        let file = dir.path().join(format!("{name}.json"));
        let out = replay(&[
            cap.to_str().unwrap(),
            "--json",
            "--timeline",
            file.to_str().unwrap(),
        ]);
        if !out.status.success() {
            assert!(
                name.contains("refused"),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        // What the capture holds, as the JSON lines say.
        let mut want = Vec::new();
        let mut want_instants = Vec::new();
        for l in String::from_utf8(out.stdout).unwrap().lines() {
            let j: Value = serde_json::from_str(l).unwrap();
            match j["type"].as_str().unwrap() {
                "operation" => {
                    for f in j["frames"].as_array().unwrap() {
                        let missing = f["entry_missing"].as_bool().unwrap_or(false);
                        let (start, dur) = if missing {
                            (f["end_ns"].as_u64().unwrap(), 0)
                        } else {
                            let s = f["start_ns"].as_u64().unwrap();
                            (s, f["end_ns"].as_u64().unwrap() - s)
                        };
                        want.push((
                            f["probe"].as_str().unwrap().to_string(),
                            format!(
                                "{},{}",
                                j["kind"].as_str().unwrap(),
                                f["layer"].as_str().unwrap()
                            ),
                            start,
                            dur,
                            f["errno"].as_str().map(str::to_string),
                        ));
                    }
                }
                "leak" | "binding_closed" | "ide_stream_leak" => want_instants.push(l.to_string()),
                _ => {}
            }
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        let events = doc["traceEvents"].as_array().expect("traceEvents");
        // Device tracks: every pid with slices is named.
        let named: std::collections::BTreeMap<u64, String> = events
            .iter()
            .filter(|e| e["ph"] == "M" && e["name"] == "process_name")
            .map(|e| {
                (
                    e["pid"].as_u64().unwrap(),
                    e["args"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut got = Vec::new();
        for e in events.iter().filter(|e| e["ph"] == "X") {
            let pid = e["pid"].as_u64().unwrap();
            assert!(named.contains_key(&pid), "{name}: pid {pid} unnamed");
            if let Some(d) = e["args"]["device"].as_str() {
                assert_eq!(named[&pid], d, "{name}: the device's track");
            }
            got.push((
                e["name"].as_str().unwrap().to_string(),
                e["cat"].as_str().unwrap().to_string(),
                ns(&e["ts"]),
                ns(&e["dur"]),
                e["args"]["errno"].as_str().map(str::to_string),
            ));
        }
        want.sort();
        got.sort();
        assert_eq!(got, want, "{name}: slices vs frames");
        let instants = events.iter().filter(|e| e["ph"] == "i").count();
        let vm_events =
            text.matches("\"vm_destroyed\"").count() + text.matches("\"vmm_exited\"").count();
        assert_eq!(
            instants - vm_events,
            want_instants.len(),
            "{name}: one instant per leak and closed binding"
        );
        // The outermost slice of a failed operation names the errno and the layer of origin.
        for e in events.iter().filter(|e| e["args"]["result"] == "error") {
            assert!(e["args"]["op_errno"].is_string(), "{e}");
            assert!(e["args"]["origin_layer"].is_string(), "{e}");
        }
        checked += 1;
        total_slices += got.len();
    }
    assert!(checked >= 5, "captures replayed: {checked}");
    assert!(total_slices > 100, "slices checked: {total_slices}");
    eprintln!("{checked} captures, {total_slices} slices checked");
}

#[test]
fn timeline_bad_path_is_a_clear_error_before_any_work() {
    let cap = captures()
        .into_iter()
        .find(|p| p.ends_with("standin-6.1.jsonl"))
        .unwrap();
    let out = replay(&[
        cap.to_str().unwrap(),
        "--timeline",
        "/nonexistent-dir/t.json",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--timeline") && err.contains("/nonexistent-dir/t.json"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing replayed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
