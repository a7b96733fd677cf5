//! Session F of the probe suite (`tests/vm/scenarios/probes.sh`): kernel-side diagnostics
//! through aya-log. The stand-in passes `tsm_bind` a poisoned `struct kvm *` (`tsm_bind
//! nonpci badkvm`, which tsm_bind rejects without touching it), so the entry program's reads
//! of `kvm->userspace_pid` and `kvm->stats_id` fault. At `--log-level debug` each fault must be
//! named in tsm-trace's log with its field and offset (never the address), and counted. A
//! storm into a one-page ring buffer then fills it: the full map must be named, and counted.

use anyhow::{Context, Result};

use crate::vm::checks::{Checks, json_lines, s};
use crate::vm::qemu::VmOutput;

/// The number right after `needle` on the first line that holds it.
fn number_after(text: &str, needle: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let rest = &l[l.find(needle)? + needle.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// The offset a diagnostic line gives for `field`, if a line names it.
fn fault_offset(err: &str, field: &str) -> Option<u32> {
    number_after(err, &format!("faulted read of {field} at offset "))
}

/// The offset the session's BTF resolution logged for `field` of `probe`'s argument
/// (`btf   resolved kvm.stats_id (tsm_bind) = 72 (tsm_standin) [...]`).
fn resolved_offset(err: &str, field: &str, probe: &str) -> Option<u32> {
    number_after(err, &format!("resolved {field} ({probe}) = "))
}

pub fn check_session_diag(out: &VmOutput) -> Result<Checks> {
    let mut c = Checks::default();
    let err = &out.section("trace_f.err")?.text;
    c.check(err.contains("kernel-side diagnostics on"), || {
        format!("trace_f: the aya-log reader did not start at --log-level debug:\n{err}")
    });
    for field in ["kvm.userspace_pid", "kvm.stats_id"] {
        let logged = fault_offset(err, field);
        c.check(logged.is_some(), || {
            format!(
                "trace_f: no debug line naming the faulted read of {field} and its offset:\n{err}"
            )
        });
        // The offset named must be the one BTF gave this session for tsm_bind's struct kvm
        // (the stand-in's layout variant, from its split BTF), not a constant.
        let resolved = resolved_offset(err, field, "tsm_bind");
        c.check(resolved.is_some() && logged == resolved, || {
            format!(
                "trace_f: the faulted read of {field} names offset {logged:?}, but BTF resolved \
                 {resolved:?} for tsm_bind:\n{err}"
            )
        });
    }
    c.check(
        err.lines()
            .filter(|l| l.contains("faulted read of"))
            .all(|l| !l.contains("0xdead")),
        || format!("trace_f: a diagnostic shows the poisoned address:\n{err}"),
    );
    c.check(err.contains("; 2 kernel read faults"), || {
        format!(
            "trace_f: the two faulted reads are not counted (want 2 kernel read faults):\n{err}"
        )
    });
    // The storm into a one-page ring buffer: the full map is named, and its drops counted.
    c.check(err.contains("EVENTS is full"), || {
        format!("trace_f: no debug line naming the full ring buffer (EVENTS):\n{err}")
    });
    let drops = number_after(err, "lost events: ");
    c.check(drops.is_some_and(|n| n > 0), || {
        format!("trace_f: the storm's ring-buffer drops are not counted (lost events: {drops:?}):\n{err}")
    });
    // Rate-limited: each CPU logs its 1st, 2nd, 4th, ... drop, not every one.
    let lines = err.lines().filter(|l| l.contains("EVENTS is full")).count() as u32;
    let cpus: u32 = {
        let t = out.section("cpus")?.text.trim();
        t.parse()
            .with_context(|| format!("section cpus: {t:?} is not a CPU count"))?
    };
    let bound = drops.map_or(0, |n| cpus * (n.max(1).ilog2() + 1));
    c.check(lines <= bound, || {
        format!("trace_f: {lines} 'EVENTS is full' lines for {drops:?} drops: more than {bound}, the log is not rate-limited")
    });
    let evs = json_lines(out, "record_f.jsonl", true)?;
    match evs.iter().find(|e| s(e, "probe") == "tsm_bind") {
        Some(e) => {
            c.check(e["ret"].as_i64() == Some(-22), || {
                format!("trace_f: tsm_bind(nonpci, badkvm) should return -EINVAL: {e}")
            });
            c.check(
                e["vm"]["pid"].is_null() && e["vm"]["stats_id"].is_null(),
                || format!("trace_f: the faulted fields must be missing, not invented: {e}"),
            );
        }
        None => c.check(false, || {
            format!("trace_f: no tsm_bind event in the record: {evs:?}")
        }),
    }
    // At the default level nothing reads the log ring buffer and nothing is named.
    let a = &out.section("trace_a.err")?.text;
    c.check(
        !a.contains("faulted read of") && !a.contains("kernel-side diagnostics on"),
        || format!("trace_a (--log-level info): kernel diagnostics shown:\n{a}"),
    );
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::fault_offset;

    #[test]
    fn finds_field_and_offset() {
        let err = "DEBUG tsm_trace_ebpf::read: faulted read of kvm.stats_id at offset 2304: the field is reported missing\n";
        assert_eq!(fault_offset(err, "kvm.stats_id"), Some(2304));
        assert_eq!(fault_offset(err, "kvm.userspace_pid"), None);
    }

    #[test]
    fn finds_the_resolved_offset_of_one_probe() {
        let err = "tsm-trace: info: btf   resolved kvm.stats_id (kvm_destroy_vm) = 7000 (vmlinux)\n\
                   tsm-trace: info: btf   resolved kvm.stats_id (tsm_bind) = 72 (tsm_standin) [via]\n";
        assert_eq!(
            super::resolved_offset(err, "kvm.stats_id", "tsm_bind"),
            Some(72)
        );
        assert_eq!(
            super::resolved_offset(err, "kvm.userspace_pid", "tsm_bind"),
            None
        );
    }
}
