//! What every suite's checker shares: [`Checks`], which counts each check and collects the
//! failures instead of stopping at the first (with the VM names tsm-trace showed, kept
//! consistent across a suite); reading `--print json` sections ([`json_lines`], [`s`]) and a
//! Prometheus exposition ([`parse_exposition`]).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::qemu::VmOutput;

/// Collects failed checks instead of stopping at the first.
#[derive(Default)]
pub struct Checks {
    pub count: usize,
    pub failed: Vec<String>,
    vm_ids: VmIds,
}

/// The VM names tsm-trace showed (`vm.id`, `vm#<12 hex>`: it never shows a kernel address)
/// against the fixtures' own print-out of each VM's `struct kvm *` (`0x%px`): the same
/// pointer always gets the same name, different pointers different names.
#[derive(Default)]
struct VmIds {
    by_ptr: BTreeMap<u64, String>,
    by_id: BTreeMap<String, u64>,
}

/// A fixture's `0x%px` pointer as a number.
fn fixture_ptr(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// `vm#` and 12 lower-case hex digits.
fn is_vm_id(s: &str) -> bool {
    s.strip_prefix("vm#").is_some_and(|h| {
        h.len() == 12
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl Checks {
    /// The suite's result: how many checks ran, or every failure with where the logs are.
    pub(crate) fn finish(self, suite: &str, out: &VmOutput) -> Result<usize> {
        if !self.failed.is_empty() {
            bail!(
                "{} of {} {suite} checks failed (logs in {}):\n  {}",
                self.failed.len(),
                self.count,
                out.run_dir.display(),
                self.failed.join("\n  ")
            );
        }
        Ok(self.count)
    }

    pub(crate) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.count += 1;
        if !ok {
            self.failed.push(what());
        }
    }

    /// `got` (a decoded `vm.id`) names the fixture's VM `fixture` (its `0x%px` pointer;
    /// `0x0`: no VM, so no id), consistently with every name checked before.
    pub(crate) fn vm_id(&mut self, got: &str, fixture: &str, what: &str) {
        self.count += 1;
        let Some(p) = fixture_ptr(fixture) else {
            self.failed.push(format!(
                "{what}: the fixture printed no pointer ({fixture:?})"
            ));
            return;
        };
        if p == 0 {
            if !got.is_empty() {
                self.failed
                    .push(format!("{what}: got {got:?}, want no VM (kvm=0x0)"));
            }
            return;
        }
        if !is_vm_id(got) {
            self.failed.push(format!(
                "{what}: got {got:?}, want a vm#<12 hex digits> name"
            ));
            return;
        }
        let seen = self.vm_ids.by_ptr.get(&p).cloned();
        let owner = self.vm_ids.by_id.get(got).copied();
        match (seen, owner) {
            (Some(id), _) if id != got => self.failed.push(format!(
                "{what}: got {got:?}, but the same VM was named {id:?} before"
            )),
            (_, Some(q)) if q != p => self.failed.push(format!(
                "{what}: {got:?} also names another of the fixture's VMs"
            )),
            _ => {
                self.vm_ids.by_ptr.insert(p, got.to_string());
                self.vm_ids.by_id.insert(got.to_string(), p);
            }
        }
    }

    /// The name already checked for the fixture's VM `fixture` (`0x%px`).
    pub(crate) fn vm_name_of(&self, fixture: &str) -> Option<String> {
        self.vm_ids.by_ptr.get(&fixture_ptr(fixture)?).cloned()
    }

    pub(crate) fn eq<T: PartialEq + std::fmt::Debug>(&mut self, got: T, want: T, what: &str) {
        self.count += 1;
        if got != want {
            self.failed
                .push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }
}

pub(crate) fn json_lines(out: &VmOutput, name: &str, skip_header: bool) -> Result<Vec<Value>> {
    let text = &out.section(name)?.text;
    text.lines()
        .skip(usize::from(skip_header))
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{name} line {}: {l}", i + 1))
        })
        .collect()
}

pub(crate) fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Parses a Prometheus text exposition into `name{k="v",...}` (labels sorted) → value.
pub fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut ls = parse_labels(labels.strip_suffix('}').unwrap_or(labels));
                ls.sort();
                let ls: Vec<String> = ls.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                format!("{name}{{{}}}", ls.join(","))
            }
            None => series.to_string(),
        };
        m.insert(key, v);
    }
    m
}

/// `a="x",b="y\"z"` → [(a, x), (b, y"z)] (values keep their escapes' meaning).
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((k.trim_start_matches(',').trim().to_string(), val));
        rest = &after[end..];
    }
    out
}

/// Blocks of a section such as the crash suite's `cr_snap` and `cr_faults`: a
/// `== <header>` line, the /bindings JSON on one line, then /metrics lines up to the next
/// header. Returns (header, bindings if they parse, the exposition).
pub(crate) fn blocks(text: &str) -> Vec<(&str, Option<Value>, BTreeMap<String, f64>)> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(head) = l.strip_prefix("== ") else {
            continue;
        };
        let bindings = lines
            .next()
            .and_then(|b| serde_json::from_str::<Value>(b).ok());
        let mut body = String::new();
        while let Some(m) = lines.peek() {
            if m.starts_with("== ") {
                break;
            }
            body.push_str(m);
            body.push('\n');
            lines.next();
        }
        out.push((head, bindings, parse_exposition(&body)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_keys_are_canonical() {
        let m = parse_exposition("# HELP x y\nm{b=\"2\",a=\"\"} 3\nm2 4.5\nm3{a=\"q\\\"x\"} 1\n");
        assert_eq!(m.get("m{a=\"\",b=\"2\"}"), Some(&3.0));
        assert_eq!(m.get("m2"), Some(&4.5));
        assert_eq!(m.get("m3{a=\"q\"x\"}"), Some(&1.0));
    }
}
