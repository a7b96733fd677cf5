//! A user's first minutes with the binary as built: `replay` of every capture in the
//! repository in every output mode (golden files), closed pipes, torn captures, bad input,
//! and `unpin` on a real BPF filesystem next to another tool's pins.
//!
//! Golden files live in `tests/golden/`; after a deliberate output change, regenerate them
//! with `UPDATE_GOLDEN=1 cargo test -p tsm-trace --test user_paths` and review the diff.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tsm-trace");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every capture that replays (the corpus also holds inputs that must be refused).
fn captures() -> Vec<PathBuf> {
    let mut v = vec![root().join("tsm-trace/tests/fixtures/standin-6.1.jsonl")];
    for name in [
        "vm-6.1-session-a.jsonl",
        "vm-7.3-late-module.jsonl",
        "vm-7.3-lifecycle.jsonl",
        "vm-7.3-session-b.jsonl",
        // `trace --deep` (the ide suite's deep phase): calls, origins, kernel stacks.
        "vm-7.3-deep.jsonl",
    ] {
        v.push(root().join("fuzz/corpus/record").join(name));
    }
    v
}

fn tsm(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("TSM_TRACE_LOG")
        .env("TZ", "UTC")
        .output()
        .expect("run tsm-trace")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (generate with UPDATE_GOLDEN=1 cargo test -p tsm-trace --test user_paths)",
            path.display()
        )
    });
    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(got.lines().count()));
        panic!(
            "{name} differs from {} at line {}:\n want: {:?}\n  got: {:?}\n(regenerate with UPDATE_GOLDEN=1 if the change is deliberate)",
            path.display(),
            first + 1,
            want.lines().nth(first),
            got.lines().nth(first)
        );
    }
}

/// The modes a user tries: (golden suffix, extra arguments).
const MODES: &[(&str, &[&str])] = &[
    ("text", &[]),
    ("no-summary", &["--no-summary"]),
    ("json", &["--json"]),
    ("failed", &["--failed"]),
    ("metrics", &["--metrics"]),
];

#[test]
fn replay_golden_outputs() {
    for cap in captures() {
        let stem = cap.file_stem().unwrap().to_string_lossy().into_owned();
        let p = cap.to_str().unwrap();
        for (mode, extra) in MODES {
            let mut args = vec!["replay", p];
            args.extend_from_slice(extra);
            let o = tsm(&args);
            assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
            assert_eq!(text(&o.stderr), "", "{args:?} wrote to stderr");
            let out = text(&o.stdout);
            // The replaying process's own figures (RSS, CPU, start time) are not the capture's.
            let stable: String = out
                .lines()
                .filter(|l| {
                    !(l.starts_with("process_")
                        || l.starts_with("# HELP process_")
                        || l.starts_with("# TYPE process_"))
                })
                .map(|l| format!("{l}\n"))
                .collect();
            golden(&format!("{stem}.{mode}"), &stable);
            let summaries = out.matches("=== tsm-trace summary").count();
            match *mode {
                "text" | "failed" => assert_eq!(summaries, 1, "{args:?}:\n{out}"),
                _ => assert_eq!(summaries, 0, "{args:?}:\n{out}"),
            }
            if *mode == "json" {
                for (i, l) in out.lines().enumerate() {
                    serde_json::from_str::<serde_json::Value>(l)
                        .unwrap_or_else(|e| panic!("{args:?} line {}: not JSON ({e}): {l}", i + 1));
                }
            }
        }
    }
}

/// Filters apply to lines and summary alike, for devices and VMs the captures name.
#[test]
fn replay_filters() {
    let cap = root().join("fuzz/corpus/record/vm-7.3-lifecycle.jsonl");
    let p = cap.to_str().unwrap();
    let all = text(&tsm(&["replay", p, "--no-summary"]).stdout);
    let dev = all
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.len() == 12 && w.contains(':'))
        })
        .expect("a device in the capture")
        .to_string();
    let o = tsm(&["replay", p, "--device", &dev]);
    assert!(o.status.success());
    let out = text(&o.stdout);
    let (lines, summary) = out.split_once("=== tsm-trace summary").expect("summary");
    assert!(!lines.is_empty());
    let lines: Vec<&str> = lines.lines().filter(|l| !l.trim().is_empty()).collect();
    for l in &lines {
        assert!(l.contains(&dev), "--device {dev} let through: {l}");
    }
    let shown = lines
        .iter()
        .filter(|l| !l.contains(" LEAK") && !l.contains(" UNBOUND"))
        .count();
    assert!(
        summary.contains(&format!(": {shown} operations")) || shown == 0,
        "summary of --device {dev} counts other devices:\n{out}"
    );
}

#[test]
fn replay_metrics_pass_promtool() {
    for cap in captures() {
        let o = tsm(&["replay", cap.to_str().unwrap(), "--metrics"]);
        assert!(o.status.success());
        let Some(r) = tsm_trace::test_support::promtool_check_metrics(&text(&o.stdout)) else {
            return;
        };
        r.unwrap_or_else(|e| panic!("{}: promtool check metrics: {e}", cap.display()));
    }
}

/// `replay … | head -1` and `replay … 2>&1 | head -1`: the reader is gone before the first
/// write. A Unix tool then exits quietly (no panic, no error message).
#[test]
fn replay_into_a_closed_pipe() {
    let cap = captures()[0].clone();
    for json in [false, true] {
        for with_stderr in [false, true] {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            let mut cmd = Command::new(BIN);
            cmd.arg("replay").arg(&cap);
            if json {
                cmd.arg("--json");
            }
            cmd.stdout(writer.try_clone().unwrap());
            if with_stderr {
                cmd.stderr(writer);
            } else {
                cmd.stderr(Stdio::piped());
                drop(writer);
            }
            let o = cmd.output().unwrap();
            assert_eq!(
                o.status.code(),
                Some(0),
                "json={json} 2>&1={with_stderr}: {:?} {}",
                o.status,
                text(&o.stderr)
            );
            assert_eq!(text(&o.stderr), "");
        }
    }
}

/// A capture cut mid-line (a killed `trace --record`): the whole events are replayed, and
/// one warning names the torn line.
#[test]
fn replay_of_a_torn_capture() {
    let cap = root().join("tsm-trace/tests/fixtures/standin-6.1.jsonl");
    let full = std::fs::read_to_string(&cap).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    let d = tempfile::tempdir().unwrap();
    let torn = d.path().join("torn.jsonl");
    let last = lines[lines.len() - 1];
    std::fs::write(
        &torn,
        format!(
            "{}\n{}",
            lines[..lines.len() - 1].join("\n"),
            &last[..last.len() / 2]
        ),
    )
    .unwrap();
    let o = tsm(&["replay", torn.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "torn.jsonl:{}: the last line is cut short",
            lines.len()
        )),
        "{err}"
    );
    // The same operations as the whole capture without its last event.
    let short = d.path().join("short.jsonl");
    std::fs::write(&short, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    let want = tsm(&["replay", short.to_str().unwrap(), "--json"]);
    assert_eq!(text(&o.stdout), text(&want.stdout));
}

/// Bad input: exit 1 and one clear line naming what is wrong and where.
#[test]
fn replay_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let w = |name: &str, body: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let empty = w("empty.jsonl", "");
    let notjson = w("notjson.jsonl", "hello\n");
    let bad_mid = w(
        "mid.jsonl",
        "{\"tsm_trace_record\":2,\"tsm_trace_version\":\"0.1.0\"}\n{\"probe\":\n{}\n",
    );
    let dir = d.path().to_str().unwrap().to_string();
    let cases: &[(&str, &str)] = &[
        ("/nonexistent/cap.jsonl", "opening /nonexistent/cap.jsonl"),
        (&empty, "the file is empty"),
        (&notjson, "line 1 is not a tsm-trace record header"),
        (&bad_mid, "mid.jsonl:2: "),
        (&dir, "Is a directory"),
    ];
    for (path, want) in cases {
        let o = tsm(&["replay", path]);
        assert_eq!(o.status.code(), Some(1), "{path}");
        let err = text(&o.stderr);
        assert!(err.starts_with("tsm-trace: error: "), "{path}: {err}");
        assert!(err.contains(want), "{path}: want {want:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(text(&o.stdout), "");
    }
}

/// `BPF_MAP_CREATE` of a one-element array named `name`, pinned at `path`.
fn pin_map(name: &str, path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    #[derive(Default)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    let mut a = Create {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        ..Default::default()
    };
    a.map_name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a plain attribute struct that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &a as *const Create,
            std::mem::size_of::<Create>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    #[repr(C)]
    struct Pin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let p = Pin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: as above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            6,
            &p as *const Pin,
            std::mem::size_of::<Pin>(),
        )
    };
    assert_eq!(
        r,
        0,
        "BPF_OBJ_PIN {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: our descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

struct Bpffs(PathBuf);

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `unpin` on a real bpffs that also holds another tool's pins: it removes only ours, and
/// refuses (removing nothing) whatever is not ours, a wrong --pin-dir, or a held lock.
#[test]
fn unpin_removes_only_ours() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("bpf");
    std::fs::create_dir(&m).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&m)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        return tsm_trace::test_support::skip_unless_ci("mounting a BPF filesystem needs root");
    }
    let _guard = Bpffs(m.clone());
    // Another tool's pins beside ours.
    std::fs::create_dir_all(m.join("other/maps")).unwrap();
    pin_map("X", &m.join("other/maps/X"));
    // Ours: one layout with two maps (links need programs: the VM suite covers them).
    let ours = m.join("tsm-trace");
    let layout = ours.join("0123456789ab");
    std::fs::create_dir_all(layout.join("maps")).unwrap();
    std::fs::create_dir_all(layout.join("links")).unwrap();
    pin_map("EVENTS", &layout.join("maps/EVENTS"));
    pin_map("GATE", &layout.join("maps/GATE"));
    let state = d.path().join("state.json");
    std::fs::write(
        &state,
        "{\"format\":1,\"boot_id\":\"b\",\"bindings\":[],\"leaks\":[]}",
    )
    .unwrap();
    // A save cut short by a kill left its temporary file: ours too.
    let temp = d.path().join("state.json.tmp");
    std::fs::write(&temp, "{\"format\":2,").unwrap();
    let st = state.to_str().unwrap();
    let unpin = |dir: &Path, extra: &[&str]| {
        let mut a = vec![
            "unpin",
            "--pin-dir",
            dir.to_str().unwrap(),
            "--state-file",
            st,
        ];
        a.extend_from_slice(extra);
        tsm(&a)
    };

    // The whole bpffs by mistake: refused, nothing removed.
    let o = unpin(&m, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("is not tsm-trace's") && err.contains("nothing was removed"),
        "{err}"
    );
    assert!(m.join("other/maps/X").exists() && layout.join("maps/EVENTS").exists());
    assert!(state.exists());

    // A plain directory: refused.
    let o = unpin(d.path(), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("not on a BPF filesystem"));

    // A foreign map under our name: refused, naming it.
    pin_map("X", &layout.join("maps/STATS"));
    let o = unpin(&ours, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("maps/STATS") && err.contains("\"X\""), "{err}");
    assert!(layout.join("maps/EVENTS").exists());
    std::fs::remove_file(layout.join("maps/STATS")).unwrap();

    // --dry-run: lists, removes nothing.
    let o = unpin(&ours, &["--dry-run"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("would remove") && out.contains("maps/EVENTS (map EVENTS)"),
        "{out}"
    );
    assert!(out.contains(&format!("would remove {st}")), "{out}");
    assert!(
        out.contains(&format!("would remove {}", temp.display())),
        "{out}"
    );
    assert!(layout.join("maps/EVENTS").exists() && state.exists() && temp.exists());

    // A daemon's lock: refused unless --force.
    let held = std::fs::File::open(&ours).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor.
    assert_eq!(
        unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let o = unpin(&ours, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("daemon holds"),
        "{}",
        text(&o.stderr)
    );
    assert!(layout.join("maps/EVENTS").exists());
    drop(held);

    // A state file that is not ours stays.
    let passwd = d.path().join("passwd");
    std::fs::write(&passwd, "root:x:0:0::/root:/bin/sh\n").unwrap();
    let o = tsm(&[
        "unpin",
        "--pin-dir",
        ours.to_str().unwrap(),
        "--state-file",
        passwd.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("not a tsm-trace state file"));
    assert!(passwd.exists() && layout.join("maps/EVENTS").exists());

    // Now for real: ours gone, the other tool's pin still there.
    let o = unpin(&ours, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("removed 2 pinned maps and links"),
        "{}",
        text(&o.stdout)
    );
    assert!(!ours.exists() && !state.exists() && !temp.exists());
    assert!(m.join("other/maps/X").exists());
    // And again: nothing there.
    let o = unpin(&ours, &[]);
    assert!(o.status.success());
    assert!(text(&o.stdout).starts_with("nothing pinned under"));
}

/// A capture that recorded the wall clock replays at the times the live session printed
/// (text in the local zone, JSON `time` in UTC); `--time boot` prints dmesg's seconds.
#[test]
fn replay_keeps_the_captures_own_times() {
    let cap = root().join("tsm-trace/tests/fixtures/standin-6.1.jsonl");
    let full = std::fs::read_to_string(&cap).unwrap();
    let (header, rest) = full.split_once('\n').unwrap();
    // The first event started at 14.438580440 s since boot; make that 12:00:00 UTC on
    // 2026-12-06 (day 20793 since the epoch).
    let first_ns: i64 = 14_438_580_440;
    let off = 20_793 * 86_400_000_000_000 + 12 * 3_600_000_000_000 - first_ns;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("wall.jsonl");
    std::fs::write(
        &p,
        format!(
            "{},\"boot_id\":\"b\",\"realtime_offset_ns\":{off}}}\n{rest}",
            header.trim_end().trim_end_matches('}')
        ),
    )
    .unwrap();
    let p = p.to_str().unwrap();
    let wall = String::from_utf8(tsm(&["replay", p, "--no-summary"]).stdout).unwrap();
    assert!(wall.starts_with("12:00:00.000000 bind "), "{wall}");
    let json = String::from_utf8(tsm(&["replay", p, "--json"]).stdout).unwrap();
    assert!(
        json.starts_with("{\"time\":\"2026-12-06T12:00:00.000000Z\",\"type\":\"operation\""),
        "{json}"
    );
    let boot =
        String::from_utf8(tsm(&["replay", p, "--time", "boot", "--no-summary"]).stdout).unwrap();
    assert!(boot.starts_with("[   14.438580] bind "), "{boot}");
    let rel = String::from_utf8(tsm(&["replay", p, "--time", "relative", "--no-summary"]).stdout)
        .unwrap();
    assert!(rel.starts_with("    0.000000 bind "), "{rel}");
    // An older capture has no wall clock: relative, and asking for wall says why.
    let o = tsm(&[
        "replay",
        cap.to_str().unwrap(),
        "--time",
        "wall",
        "--no-summary",
    ]);
    assert!(text(&o.stdout).starts_with("    0.000000 bind "));
    assert!(text(&o.stderr).contains("does not record the wall clock"));
}

/// Every subcommand refuses bad input with its usage exit code (2) and a first line that
/// names the argument and the value; nothing panics, nothing reaches stdout.
#[test]
fn bad_input_of_every_subcommand() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--listen", "nonsense"], "'nonsense' for '--listen"),
        (
            &["run", "--late-attach-window", "-1s"],
            "negative durations",
        ),
        (&["run", "--max-bindings", "999999999999"], "from 1 to"),
        (&["run", "--grace", "soon"], "'soon' for '--grace"),
        (&["trace", "--device", "zz"], "is not a PCI address"),
        (&["trace", "--time", "weird"], "'weird' for '--time"),
        (
            &["trace", "--vm", "0xffff888000000000"],
            "0xffff888000000000",
        ),
        (&["replay"], "<FILE>"),
        (
            &["replay", "x.jsonl", "--metrics", "--json"],
            "'--metrics' cannot be used with '--json'",
        ),
        (
            &["unpin", "--state-file", "relative"],
            "is not an absolute path",
        ),
        (&["unpin", "--pin-dir"], "--pin-dir"),
        (&["doctor", "--bogus"], "'--bogus'"),
        (&["check", "--symbol", "bogus"], "expected PROBE=FUNCTION"),
        (
            &["--log-level", "loud", "doctor"],
            "unknown log level \"loud\"",
        ),
        (&["nosuchcommand"], "'nosuchcommand'"),
    ];
    for (args, want) in cases {
        let o = tsm(args);
        let err = text(&o.stderr);
        let first = err.lines().next().unwrap_or_default();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(first.starts_with("error: "), "{args:?}: {first}");
        assert!(err.contains(want), "{args:?}: want {want:?} in:\n{err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(text(&o.stdout), "", "{args:?}");
    }
}

/// Every subcommand's `--help` works, exits 0, and fits a pipe that closes early.
#[test]
fn help_of_every_subcommand() {
    for sub in ["run", "trace", "replay", "check", "doctor", "unpin"] {
        let o = tsm(&[sub, "--help"]);
        assert!(o.status.success(), "{sub} --help");
        let out = text(&o.stdout);
        assert!(
            out.contains(&format!("Usage: tsm-trace {sub}")),
            "{sub}:\n{out}"
        );
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let s = Command::new(BIN)
            .args([sub, "--help"])
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            !text(&s.stderr).contains("panicked"),
            "{sub}: {}",
            text(&s.stderr)
        );
    }
}

/// A capture whose lines are out of time order (two CPUs' ring-buffer records interleave:
/// adjacent events of different threads swapped) replays to the same lines as in order.
/// Only records that returned close together are swapped: the ring buffer orders records by
/// reservation, so two CPUs' records come out of order by the moments between a return's
/// timestamp and its reservation, never by the seconds between two operations (a record
/// arriving more than the correlator's pending timeout late is, rightly, not nested).
#[test]
fn replay_of_an_out_of_order_capture() {
    const CLOSE_NS: u64 = 100_000_000;
    let mut tried = 0;
    for cap in captures() {
        let full = std::fs::read_to_string(&cap).unwrap();
        let mut lines: Vec<String> = full.lines().map(str::to_string).collect();
        let field =
            |l: &str, k: &str| serde_json::from_str::<serde_json::Value>(l).ok()?[k].as_u64();
        let tid = |l: &str| field(l, "tid");
        let close = |a: &str, b: &str| matches!((field(a, "end_ns"), field(b, "end_ns")), (Some(x), Some(y)) if x.abs_diff(y) < CLOSE_NS);
        let mut swapped = 0;
        let mut i = 1;
        while i + 1 < lines.len() {
            if tid(&lines[i]).is_some()
                && tid(&lines[i]) != tid(&lines[i + 1])
                && close(&lines[i], &lines[i + 1])
            {
                lines.swap(i, i + 1);
                swapped += 1;
                i += 2;
            } else {
                i += 1;
            }
        }
        if swapped == 0 {
            continue;
        }
        tried += swapped;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shuffled.jsonl");
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        let want = tsm(&["replay", cap.to_str().unwrap(), "--json"]);
        let got = tsm(&["replay", p.to_str().unwrap(), "--json"]);
        assert!(got.status.success(), "{}", text(&got.stderr));
        assert_eq!(
            text(&got.stdout),
            text(&want.stdout),
            "{} with {swapped} pairs swapped",
            cap.display()
        );
    }
    assert!(tried >= 3, "only {tried} pairs of lines could be swapped");
}
