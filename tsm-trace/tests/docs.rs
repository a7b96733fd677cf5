//! Everything the operator docs name exists: metric names and label values (against a real
//! exposition: `replay --metrics` over fixture captures, plus the self-metrics the daemon
//! publishes for its probes), CLI flags (against each subcommand's `--help`), `TSM_TRACE_*`
//! variables (clap's `env` names in that help), the runbook's `tsm-trace` commands and HTTP
//! paths, and dashboard panel titles (against `dashboards/tsm-trace.json`).
//!
//! Docs: README.md, docs/*.md, dashboards/*.yml, dashboards/README.md, deploy/README.md.
//! The extractors are tested on bad samples below, so the test can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use tsm_trace::exporters::metrics::Metrics;
use tsm_trace::probes::TARGETS;
use tsm_trace::probes::expiry::Expired;
use tsm_trace::probes::expiry::ExpiryReason;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tsm-trace"))
}

fn output(c: &mut Command) -> String {
    let o = c.output().expect("running tsm-trace");
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("UTF-8")
}

/// What exists: metric names, label values by label name, flags and variables by subcommand,
/// panel titles, HTTP paths.
#[derive(Default)]
struct Known {
    metrics: BTreeSet<String>,
    labels: BTreeMap<String, BTreeSet<String>>,
    flags: BTreeMap<String, BTreeSet<String>>,
    vars: BTreeSet<String>,
    panels: BTreeSet<String>,
    paths: BTreeSet<String>,
}

impl Known {
    /// Adds an exposition's `# TYPE` names (with `_bucket`/`_sum`/`_count` for histograms)
    /// and every `label="value"` of its samples.
    fn add_exposition(&mut self, text: &str) {
        for l in text.lines() {
            if let Some(t) = l.strip_prefix("# TYPE ") {
                let mut w = t.split(' ');
                let (name, kind) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
                self.metrics.insert(name.to_string());
                if kind == "histogram" {
                    for s in ["_bucket", "_sum", "_count"] {
                        self.metrics.insert(format!("{name}{s}"));
                    }
                }
            } else if let Some((_, rest)) = l.split_once('{') {
                let body = rest.rsplit_once('}').map_or("", |(b, _)| b);
                for (k, v) in label_pairs(body) {
                    self.labels.entry(k).or_default().insert(v);
                }
            }
        }
    }
}

/// `a="x",b="y"` (also with spaces, as in PromQL) as pairs.
fn label_pairs(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((k, after)) = rest.split_once("=\"") {
        let key = k
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        let Some((v, tail)) = after.split_once('"') else {
            break;
        };
        // `!="…"` and `=~"…"` are not claims that a value exists.
        if !k.ends_with('!') && !k.ends_with('=') && !key.is_empty() {
            out.push((key.to_string(), v.to_string()));
        }
        rest = tail;
    }
    out
}

fn subcommands() -> Vec<String> {
    let help = output(bin().arg("--help"));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Flags (`--x`, `-x`) and `[env: X=]` names of one `--help` text.
fn help_items(help: &str, flags: &mut BTreeSet<String>, vars: &mut BTreeSet<String>) {
    for w in help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
        let w = w.split(['=', '<']).next().unwrap_or("");
        if w.starts_with('-') && w.len() > 1 {
            flags.insert(w.to_string());
        }
    }
    for (_, rest) in help
        .match_indices("[env: ")
        .map(|(i, _)| ((), &help[i + 6..]))
    {
        if let Some((v, _)) = rest.split_once('=') {
            vars.insert(v.to_string());
        }
    }
}

fn known() -> Known {
    let mut k = Known::default();
    // A real exposition: captures through `replay --metrics`.
    // `--grace 0s`: the capture's VMs exit with devices bound, so leaks are reported.
    for (f, grace) in [
        ("tsm-trace/tests/fixtures/standin-6.1.jsonl", "5s"),
        ("tsm-trace/tests/fixtures/standin-6.1.jsonl", "0s"),
        ("fuzz/corpus/record/vm-7.3-lifecycle.jsonl", "5s"),
        // PCIe IDE steps and a leaked stream (the ide VM suite's session).
        ("fuzz/corpus/record/vm-7.3-ide.jsonl", "5s"),
    ] {
        let mut c = bin();
        c.args(["replay", "--metrics", "--grace", grace])
            .arg(root().join(f));
        k.add_exposition(&output(&mut c));
    }
    // The IDE session cut before the leaked stream's release: the leak's own series.
    let ide = std::fs::read_to_string(root().join("fuzz/corpus/record/vm-7.3-ide.jsonl")).unwrap();
    let release_start = ide
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["probe"] == "ide_stream_release")
        .and_then(|v| v["start_ns"].as_u64())
        .expect("the IDE capture releases its leaked stream");
    let cut: Vec<&str> = ide
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["end_ns"].as_u64())
                .is_none_or(|end| end < release_start)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cut_file = dir.path().join("ide-before-release.jsonl");
    std::fs::write(&cut_file, cut.join("\n") + "\n").unwrap();
    let mut c = bin();
    c.args(["replay", "--metrics"]).arg(&cut_file);
    k.add_exposition(&output(&mut c));
    // What the daemon adds for its session (event_loop::publish_session): every program of
    // every probe, its miss counters, and an expired entry of an unknown probe.
    let m = Metrics::new();
    for t in TARGETS.iter() {
        for (name, kind) in tsm_trace::probes::program_names(t) {
            m.set_probe_attached(t.probe, name, kind.as_str(), true);
            m.misses().declare(t.probe, kind);
        }
    }
    m.misses().observe_expired(&Expired {
        inflight: vec![(None, ExpiryReason::Timeout)],
        ..Default::default()
    });
    m.set_btf_field("kvm.stats_id", true);
    m.set_kernel_info("v5", true);
    m.set_reconcile_interval(std::time::Duration::from_secs(60));
    k.add_exposition(&m.render());
    k.metrics.insert("up".into());
    let mut top = BTreeSet::new();
    help_items(&output(bin().arg("--help")), &mut top, &mut k.vars);
    for sub in subcommands() {
        let mut f = top.clone();
        help_items(&output(bin().args([&sub, "--help"])), &mut f, &mut k.vars);
        k.flags.insert(sub, f);
    }
    k.flags.insert(String::new(), top);
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dashboards/tsm-trace.json")).unwrap(),
    )
    .unwrap();
    fn titles(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(t) = o.get("title").and_then(|t| t.as_str()) {
                    out.insert(t.to_string());
                }
                o.values().for_each(|x| titles(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| titles(x, out)),
            _ => {}
        }
    }
    titles(&dash, &mut k.panels);
    let http = std::fs::read_to_string(root().join("tsm-trace/src/http/mod.rs")).unwrap();
    for (i, _) in http.match_indices(".route(\"") {
        let p = &http[i + 8..];
        k.paths.insert(p[..p.find('"').unwrap_or(0)].to_string());
    }
    k
}

/// Labels whose values are free-form (hosts, devices, VMs, functions, errnos, buckets) or
/// belong to other exporters: their values are not claims about tsm-trace's label sets.
const FREE_LABELS: &[&str] = &[
    "job",
    "instance",
    "device",
    "vm",
    "function",
    "errno",
    "le",
    "quantile",
    "alertname",
    "severity",
    "field",
    "version",
    "kernel",
    "tsm_patch",
    "pci_tsm",
    "tsm",
    // The latency buckets' exemplars (OpenMetrics only, with span export): ids as values.
    "trace_id",
    "span_id",
];

/// Everything `doc` names that does not exist, one line each.
fn problems(name: &str, doc: &str, k: &Known) -> Vec<String> {
    let mut bad = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // Metric names: `tsm_trace_…`, not part of a recording rule's name (`a:tsm_trace_b:c`).
    for (i, _) in doc.match_indices("tsm_trace_") {
        if i > 0 && ident(doc[..i].chars().last().unwrap()) {
            continue;
        }
        let word: String = doc[i..].chars().take_while(|c| ident(*c)).collect();
        if word.contains(':') || word.ends_with('_') {
            continue;
        }
        if !k.metrics.contains(&word) {
            bad.push(format!("{name}: metric {word} is not exported"));
        }
    }
    // Label values: `label="value"` in selectors and examples.
    for (key, v) in label_pairs(doc) {
        if FREE_LABELS.contains(&key.as_str())
            || v.is_empty()
            || v.contains(['$', '{', '|', '*', '<', '…', ' ', '.'])
        {
            continue;
        }
        match k.labels.get(&key) {
            Some(vals) if vals.contains(&v) => {}
            Some(_) => bad.push(format!("{name}: {key}=\"{v}\" is in no exposition")),
            None => bad.push(format!("{name}: label {key} is in no exposition")),
        }
    }
    // The label table of docs/metrics.md: "| `label` (…) | `v1`, `v2` (…), … |".
    for l in doc.lines() {
        let cells: Vec<&str> = l.split(" | ").collect();
        if cells.len() != 2 || !l.starts_with("| `") {
            continue;
        }
        let key = cells[0]
            .trim_start_matches("| `")
            .split('`')
            .next()
            .unwrap_or("");
        if FREE_LABELS.contains(&key) || !k.labels.contains_key(key) {
            continue;
        }
        // Only the values themselves: backticked words outside parentheses.
        let mut depth = 0;
        let mut outside = String::new();
        for c in cells[1].chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ if depth == 0 => outside.push(c),
                _ => {}
            }
        }
        for v in outside.split('`').skip(1).step_by(2) {
            if !v.starts_with("tsm_trace_")
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                && !k.labels[key].contains(v)
            {
                bad.push(format!("{name}: {key} value `{v}` is in no exposition"));
            }
        }
    }
    // Variables.
    for (i, _) in doc.match_indices("TSM_TRACE_") {
        let word: String = doc[i..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
            .collect();
        if word.ends_with('_') || word == "TSM_TRACE_ARGS" && unit_uses_args() {
            continue;
        }
        if !k.vars.contains(&word) {
            bad.push(format!("{name}: variable {word} is no option's env name"));
        }
    }
    // `tsm-trace …` commands (code spans and fenced lines), standalone `--flag` spans (not
    // in a paragraph about cargo, whose flags are cargo's and xtask's), curl paths.
    let mut fenced = Vec::new();
    let mut in_fence = false;
    for l in doc.lines() {
        if l.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if in_fence {
            fenced.push(l);
        }
    }
    let paragraphs = doc.split("\n\n").flat_map(|p| p.split("\n- "));
    let mut items: Vec<(&str, bool)> = fenced.into_iter().map(|l| (l, false)).collect();
    for para in paragraphs {
        let cargo = para.contains("cargo ");
        items.extend(para.split('`').skip(1).step_by(2).map(|s| (s, !cargo)));
    }
    for (s, standalone_ok) in items {
        let s = s.trim();
        if let Some(cmd) = s.strip_prefix("tsm-trace ") {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let sub = words.first().copied().unwrap_or("");
            let flags = if sub.starts_with('-') {
                k.flags.get("")
            } else {
                k.flags.get(sub)
            };
            if sub.starts_with('<') {
                continue;
            }
            let Some(flags) = flags else {
                bad.push(format!("{name}: `tsm-trace {sub}`: no such subcommand"));
                continue;
            };
            for w in words.iter().filter(|w| w.starts_with("--")) {
                let f = w.split('=').next().unwrap_or(w);
                let f = f.trim_end_matches([',', ')', '.', ';']);
                if is_flag(f) && !flags.contains(f) {
                    bad.push(format!("{name}: `tsm-trace {sub}` has no flag {f}"));
                }
            }
        } else if standalone_ok && s.starts_with("--") && s.split_whitespace().count() <= 2 {
            let f = s.split([' ', '=']).next().unwrap_or(s);
            if is_flag(f) && !k.flags.values().any(|fs| fs.contains(f)) {
                bad.push(format!("{name}: flag {f} is in no subcommand's --help"));
            }
        }
        if let Some((_, p)) = s.split_once("localhost:9477") {
            let path: String = p
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '/')
                .collect();
            if !path.is_empty() && !k.paths.contains(&path) {
                bad.push(format!("{name}: no HTTP path {path}"));
            }
        }
    }
    // Panel titles: "…" followed by "panel", or on a line about the dashboard.
    for l in doc.lines() {
        let l = l.replace("\\\"", "\"");
        let parts: Vec<&str> = l.split('"').collect();
        for (i, t) in parts.iter().enumerate().skip(1).step_by(2) {
            let next = parts.get(i + 1).copied().unwrap_or("");
            let about = next.starts_with(" panel")
                || ["ashboard ", "ashboard:", "ashboard's"]
                    .iter()
                    .any(|w| l.contains(w));
            let t = t.trim();
            if about
                && t.len() > 3
                && t.chars().next().is_some_and(char::is_uppercase)
                && !k.panels.contains(t)
            {
                bad.push(format!("{name}: no dashboard panel titled {t:?}"));
            }
        }
    }
    bad
}

/// `--word-word` (not a markdown rule `---`, not a placeholder).
fn is_flag(f: &str) -> bool {
    f.strip_prefix("--").is_some_and(|r| {
        r.starts_with(|c: char| c.is_ascii_lowercase())
            && r.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    })
}

fn unit_uses_args() -> bool {
    std::fs::read_to_string(root().join("deploy/systemd/tsm-trace.service"))
        .is_ok_and(|u| u.contains("TSM_TRACE_ARGS"))
}

fn docs() -> Vec<(String, String)> {
    let r = root();
    let mut files: Vec<PathBuf> = ["README.md", "dashboards/README.md", "deploy/README.md"]
        .iter()
        .map(|f| r.join(f))
        .collect();
    for (dir, ext) in [("docs", "md"), ("dashboards", "yml")] {
        let mut more: Vec<PathBuf> = std::fs::read_dir(r.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        more.sort();
        files.extend(more);
    }
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(&r).unwrap_or(&p).display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn everything_the_docs_name_exists() {
    let k = known();
    assert!(
        k.metrics.contains("tsm_trace_operations_total"),
        "no exposition"
    );
    assert!(
        k.flags.contains_key("run") && k.vars.contains("TSM_TRACE_LISTEN"),
        "no --help"
    );
    assert!(
        k.panels.contains("Failures by errno and layer"),
        "no dashboard"
    );
    let bad: Vec<String> = docs()
        .iter()
        .flat_map(|(n, d)| problems(n, d, &k))
        .collect();
    assert!(
        bad.is_empty(),
        "{} things the docs name do not exist:\n  {}",
        bad.len(),
        bad.join("\n  ")
    );
}

/// Each kind of claim, made wrong on a bad sample, is caught.
#[test]
fn a_doc_naming_what_does_not_exist_fails() {
    let k = known();
    for (sample, want) in [
        ("`tsm_trace_binds_total`", "metric tsm_trace_binds_total"),
        ("{reason=\"buffer_full\"}", "reason=\"buffer_full\""),
        (
            "| `reason` (lost events) | `ringbuf_full`, `queue_overrun` |",
            "`queue_overrun`",
        ),
        ("`TSM_TRACE_LISTEN_ADDR`", "variable TSM_TRACE_LISTEN_ADDR"),
        (
            "`tsm-trace run --reconcile-every 5s`",
            "no flag --reconcile-every",
        ),
        ("`tsm-trace status`", "no such subcommand"),
        ("`--max-binding`", "flag --max-binding"),
        ("`curl -s localhost:9477/leaks`", "no HTTP path /leaks"),
        (
            "The \"Connect latency by function\" panel",
            "Connect latency by function",
        ),
    ] {
        let p = problems("sample", sample, &k);
        assert!(
            p.iter().any(|x| x.contains(want)),
            "{sample:?} not caught: {p:?}"
        );
    }
    // And the same claims, right, pass.
    for good in [
        "`tsm_trace_operations_total{reason=\"ringbuf_full\"}` `TSM_TRACE_LISTEN`",
        "`tsm-trace run --reconcile-interval 0` `--max-bindings` `curl localhost:9477/readyz`",
        "The \"Connect p99 by layer\" panel",
    ] {
        assert_eq!(problems("sample", good, &k), Vec::<String>::new(), "{good}");
    }
}
