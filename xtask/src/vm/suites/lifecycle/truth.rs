//! The fixtures' ground truth of the lifecycle suite (`lc_truth`: one `step=<name>
//! src=<source> ...` line per record the script, the sysfs writes and the link ops made), and
//! what it says: the devices, which link op failed, the errno a sysfs write returned.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use crate::vm::kv::{parse_kv, pe_name};

pub(super) const A: &str = "0000:00:04.0";
pub(super) const B: &str = "0000:00:04.1";
pub(super) const C: &str = "0000:00:05.0";

pub(super) type Kv = BTreeMap<String, String>;

/// One ground-truth line: `step=<name> src=<source> ...`.
pub(super) struct Rec {
    pub(super) step: String,
    pub(super) src: String,
    pub(super) kv: Kv,
}

pub(super) struct Truth(pub(super) Vec<Rec>);

impl Truth {
    pub(super) fn parse(text: &str) -> Truth {
        Truth(
            text.lines()
                .filter_map(|l| {
                    let kv = parse_kv(l);
                    // The step and source are the first two keys; the rest is a fixture line
                    // (whose own keys never include step or src).
                    let step = kv.get("step")?.clone();
                    let src = kv.get("src")?.clone();
                    Some(Rec { step, src, kv })
                })
                .collect(),
        )
    }

    /// Devices whose `tsm/connect` named a TSM at the scrape of `phase` (`snap` in
    /// lifecycle.sh), but for `ours` (the daemon's bindings: `tsm_trace_devices` counts a
    /// bound device as bound, not connected).
    pub(super) fn connected_at(&self, phase: &str, ours: &[String]) -> usize {
        self.0
            .iter()
            .filter(|r| r.src == "links" && r.kv.get("phase").is_some_and(|p| p == phase))
            .filter(|r| !t(&r.kv, "connect").is_empty())
            .filter(|r| !ours.contains(&t(&r.kv, "dev")))
            .count()
    }

    pub(super) fn all(&self, step: &str, src: &str) -> std::vec::IntoIter<&Kv> {
        self.0
            .iter()
            .filter(|r| r.step == step && r.src == src)
            .map(|r| &r.kv)
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// The first record of `src` in `step` satisfying `pred`.
    pub(super) fn find(&self, step: &str, src: &str, pred: impl Fn(&Kv) -> bool) -> Result<&Kv> {
        self.all(step, src)
            .find(|kv| pred(kv))
            .with_context(|| format!("ground truth: no {src} record in step {step}"))
    }

    pub(super) fn one(&self, step: &str, src: &str) -> Result<&Kv> {
        self.find(step, src, |_| true)
    }

    /// The standin/linktsm record of command `cmd` in `step`.
    pub(super) fn ctl(&self, step: &str, src: &str, cmd: &str) -> Result<&Kv> {
        self.find(step, src, |kv| t(kv, "cmd") == cmd)
    }

    /// The link ops' own records of `op` in `step`, in order.
    pub(super) fn events(&self, step: &str, op: &str) -> Vec<&Kv> {
        self.all(step, "event")
            .filter(|kv| t(kv, "op") == op)
            .collect()
    }

    /// The step's records with only the link op events of `dev`.
    pub(super) fn for_dev(&self, step: &str, dev: &str) -> Truth {
        Truth(
            self.0
                .iter()
                .filter(|r| r.step == step && (r.src != "event" || t(&r.kv, "dev") == dev))
                .map(|r| Rec {
                    step: r.step.clone(),
                    src: r.src.clone(),
                    kv: r.kv.clone(),
                })
                .collect(),
        )
    }

    pub(super) fn state(&self, step: &str, dev: &str) -> Result<&Kv> {
        self.find(step, "state", |kv| t(kv, "dev") == dev)
    }
}

pub(super) fn t(kv: &Kv, k: &str) -> String {
    kv.get(k).cloned().unwrap_or_default()
}

/// A pointer as a number (`0x%px`, `{:#x}` and zero padding all agree).
pub(super) fn ptr(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// Which fixture op recorded a failure in `step`: its driver function (layer tsm_driver).
pub(super) fn failing_link_op(truth: &Truth, step: &str) -> Option<String> {
    truth
        .all(step, "event")
        .rfind(|kv| t(kv, "err") != "0" || t(kv, "ret") == "null")
        .map(|kv| format!("driver_{}", t(kv, "op")))
}

/// The errno of a failed sysfs write, or None when it succeeded: the number the write
/// returned (`errno=`) and the kernel's name for it (`err=`, its `%pe`).
pub(super) fn write_errno(kv: &Kv) -> Result<Option<(String, i64)>> {
    match t(kv, "write").as_str() {
        "ok" => Ok(None),
        "fail" => {
            let n: i64 = t(kv, "errno")
                .parse()
                .with_context(|| format!("a failed sysfs write without its errno: {kv:?}"))?;
            Ok(Some((pe_name(&t(kv, "err")), n)))
        }
        other => bail!("sysfs write result {other:?} is neither ok nor fail: {kv:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_lines_keep_step_and_source() {
        let t = Truth::parse(
            "step=x src=event seq=1 op=probe dev=0000:00:04.0 err=-ENODEV ret=null\nnoise\n",
        );
        assert_eq!(t.events("x", "probe").len(), 1);
        assert_eq!(failing_link_op(&t, "x").as_deref(), Some("driver_probe"));
        assert_eq!(ptr("0x0000000000001234"), Some(0x1234));
        assert_eq!(pe_name("-EIO"), "EIO");
    }
}
