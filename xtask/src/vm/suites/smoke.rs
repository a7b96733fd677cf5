//! The fixture smokes (no tsm-trace): every stand-in ctl command against its expected result,
//! and the lifecycle smoke's in-guest comparisons with the real PCI TSM core.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::vm::kv::parse_kv;
use crate::vm::qemu::VmOutput;

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ENODEV: i32 = 19;
const EOPNOTSUPP: i32 = 95;
const EINVAL: i32 = 22;
const EIO: i32 = 5;
const EFAULT: i32 = 14;
const EBUSY: i32 = 16;

/// Check the lifecycle smoke (`tests/vm/scenarios/lifecycle-smoke.sh`): the guest compares
/// every step's ground truth (sysfs, the fixture's `events`/`last`/`info`) with what the real
/// PCI TSM core must do and prints one `check=<name> ok|FAIL ...` line per comparison in the
/// `checks` section; every line must say ok, at least `LIFECYCLE_MIN_CHECKS` of them.
pub fn check_lifecycle(out: &VmOutput) -> Result<usize> {
    const LIFECYCLE_MIN_CHECKS: usize = 60;
    let text = &out.section("checks")?.text;
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("check=")).collect();
    let failed: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| parse_kv(l).get("result").map(String::as_str) != Some("ok"))
        .collect();
    let mut errs: Vec<String> = failed.iter().map(|l| l.to_string()).collect();
    if out.run_rc != Some(0) {
        errs.push(format!("run.sh exited {:?}", out.run_rc));
    }
    if lines.len() < LIFECYCLE_MIN_CHECKS {
        errs.push(format!(
            "only {} checks ran, expected at least {LIFECYCLE_MIN_CHECKS}",
            lines.len()
        ));
    }
    if !errs.is_empty() {
        bail!(
            "{} of {} lifecycle checks failed (logs in {}):\n  {}",
            errs.len(),
            lines.len(),
            out.run_dir.display(),
            errs.join("\n  ")
        );
    }
    Ok(lines.len())
}

/// Check the placeholder scenario's output; returns the number of checks made.
pub fn check_smoke(out: &VmOutput) -> Result<usize> {
    let mut n = 0;
    let mut errs: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        n += 1;
        if !ok {
            errs.push(what);
        }
    };

    let insmod = out.section("insmod")?;
    check(
        insmod.rc == Some(0),
        format!("insmod failed: {}", insmod.text.trim()),
    );
    let module = out.section("module")?;
    check(
        module.text.trim() == "live",
        format!("module state {:?}", module.text.trim()),
    );
    let btf = out.section("btf")?;
    check(
        btf.rc == Some(0),
        format!("/sys/kernel/btf/tsm_standin missing: {}", btf.text.trim()),
    );
    let names = out.section("btf_names")?;
    check(
        !names.text.contains("=no") && names.text.contains("=yes"),
        format!("module BTF lacks names: {}", names.text.trim()),
    );
    let info = parse_kv(&out.section("standin_info")?.text);
    let real_pci_tsm = info.get("pci_tsm").map(String::as_str) == Some("real");
    check(
        out.run_rc == Some(0),
        format!("run.sh exited {:?}", out.run_rc),
    );

    let mut steps: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for line in out.section("steps")?.text.lines() {
        let kv = parse_kv(line);
        if let Some(name) = kv.get("step") {
            steps.push((name.clone(), kv));
        }
    }
    let get = |name: &str| steps.iter().find(|(n, _)| n == name).map(|(_, kv)| kv);
    let empty = BTreeMap::new();
    let field = |step: &str, key: &str| -> String {
        get(step)
            .unwrap_or(&empty)
            .get(key)
            .cloned()
            .unwrap_or_default()
    };

    // Every record parses, is fresh, and write() failed exactly when rc != 0.
    let mut last_seq = 0u64;
    for (name, kv) in &steps {
        let seq: u64 = kv.get("seq").and_then(|s| s.parse().ok()).unwrap_or(0);
        check(
            seq > last_seq,
            format!("{name}: seq {seq} not after {last_seq}"),
        );
        last_seq = seq;
        let rc: Option<i32> = kv.get("rc").and_then(|s| s.parse().ok());
        check(rc.is_some(), format!("{name}: no rc in record {kv:?}"));
        let write_ok = kv.get("write").map(String::as_str) == Some("ok");
        check(
            write_ok == (rc == Some(0)),
            format!("{name}: write={:?} but rc={rc:?}", kv.get("write")),
        );
        check(
            kv.contains_key("pid") && kv.contains_key("cmd"),
            format!("{name}: record lacks pid/cmd"),
        );
    }

    let mut expect: Vec<(&str, i32)> = vec![
        ("vm1", 0),
        ("vm2", 0),
        ("vm1_again", -EEXIST),
        ("vdev1", 0),
        ("vdev2_nonpci", 0),
        ("vdev3_nokvm", 0),
        ("vdev4_vm2", 0),
        ("vdev_nodev", -ENODEV),
        ("flags", -EOPNOTSUPP),
        ("novdev", -ENOENT),
        ("nokvm", -ENODEV),
        ("badop", -EINVAL),
        ("nonpci", -EINVAL),
        ("inject_eio", 0),
        ("bind_eio", -EIO),
        ("delay", 0),
        ("inject_efault", 0),
        ("bind_efault", -EFAULT),
        ("delay0", 0),
        ("bind_same", 0),
        ("bind_other_vm", -EBUSY),
        ("unbind", 0),
        ("rebind", 0),
        ("destroy1", 0),
        ("vdev6", 0),
        ("bind6", 0),
        ("destroy6_nounbind", 0),
        ("disconnect", 0),
        ("tsm_bind", 0),
        ("tsm_unbind", 0),
        ("tsm_unbind_nonpci", -EINVAL),
        ("vm2_destroy", 0),
        ("destroy4", 0),
        ("vm1_destroy", 0),
        ("destroy2", 0),
        ("destroy3", 0),
        ("realpci_on", if real_pci_tsm { 0 } else { -EOPNOTSUPP }),
        ("bogus", -EINVAL),
        ("inject_clear", 0),
    ];
    if real_pci_tsm {
        expect.extend([
            ("vm3", 0),
            ("vdev7", 0),
            ("real_bind", -EINVAL),
            ("real_unbind", 0),
            ("realpci_off", 0),
            ("destroy7", 0),
            ("vm3_destroy", 0),
        ]);
    }
    for (name, rc) in &expect {
        let got = field(name, "rc");
        check(
            got == rc.to_string(),
            format!("{name}: rc {got:?}, expected {rc} ({:?})", get(name)),
        );
    }
    check(
        steps.len() == expect.len(),
        format!("{} steps ran, {} expected", steps.len(), expect.len()),
    );

    // Ground-truth details.
    let kvm1 = field("vm1", "kvm");
    let kvm2 = field("vm2", "kvm");
    for vm in ["vm1", "vm2"] {
        let pid = field(vm, "pid");
        check(
            field(vm, "kvm_pid") == pid && field(vm, "stats_id") == format!("kvm-{pid}"),
            format!("{vm}: owner not the caller: {:?}", get(vm)),
        );
    }
    check(
        kvm1.starts_with("0x") && kvm1 != "0x0" && kvm1 != kvm2,
        format!("vm kvm pointers {kvm1:?} {kvm2:?}"),
    );
    check(
        field("vm1", "pid") != field("vm2", "pid"),
        "vm2 not created by a child".into(),
    );
    check(field("vdev1", "dev") == "0000:00:02.0", "vdev1 dev".into());
    check(
        field("vdev2_nonpci", "dev") == "tsm_standin",
        "nonpci dev name".into(),
    );
    check(field("vdev3_nokvm", "kvm") == "0x0", "nokvm kvm".into());
    check(
        field("bind_eio", "driver_rc") == format!("-{EIO}")
            && field("bind_eio", "after_kvm") == "0x0",
        format!("bind_eio: {:?}", get("bind_eio")),
    );
    let driver_ns: u64 = field("bind_efault", "driver_ns").parse().unwrap_or(0);
    check(
        driver_ns >= 15_000_000,
        format!("bind_efault: driver_ns {driver_ns} < 20ms delay"),
    );
    check(
        field("bind_efault", "after_kvm") == kvm1
            && field("bind_efault", "respond_rc") == format!("-{EFAULT}")
            && field("bind_efault", "tdi_id") == "77"
            && field("bind_efault", "virt_id") == "77",
        format!(
            "bind_efault: device must stay bound: {:?}",
            get("bind_efault")
        ),
    );
    check(
        field("bind_same", "driver_called").is_empty() && field("bind_same", "bound_kvm") == kvm1,
        format!("bind_same: {:?}", get("bind_same")),
    );
    check(
        field("bind_other_vm", "bound_kvm") == kvm1 && field("bind_other_vm", "kvm") == kvm2,
        format!("bind_other_vm: {:?}", get("bind_other_vm")),
    );
    check(
        field("unbind", "driver_unbind") == "1" && field("unbind", "after_kvm") == "0x0",
        format!("unbind: {:?}", get("unbind")),
    );
    check(
        field("rebind", "driver_called") == "1" && field("rebind", "after_kvm") == kvm1,
        format!("rebind: {:?}", get("rebind")),
    );
    check(
        field("destroy1", "driver_unbind") == "1" && field("destroy1", "after_kvm") == "0x0",
        format!("destroy1: {:?}", get("destroy1")),
    );
    check(
        field("destroy6_nounbind", "driver_unbind").is_empty()
            && field("destroy6_nounbind", "after_kvm") == kvm2,
        format!(
            "destroy6_nounbind must leak the binding: {:?}",
            get("destroy6_nounbind")
        ),
    );
    check(
        field("disconnect", "driver_unbind") == "1" && field("disconnect", "bound_kvm") == kvm2,
        format!("disconnect: {:?}", get("disconnect")),
    );
    check(
        field("tsm_bind", "driver_called") == "1" && field("tsm_bind", "tdi_id") == "5",
        format!("tsm_bind: {:?}", get("tsm_bind")),
    );
    check(
        field("vm2_destroy", "destroyed") == "0"
            && field("destroy4", "destroyed") == "1"
            && field("destroy4", "destroyed_kvm") == kvm2,
        "vm2 must be destroyed when its last vDevice goes".into(),
    );
    check(
        field("vm1_destroy", "destroyed") == "0" && field("destroy2", "destroyed_kvm") == kvm1,
        "vm1 must be destroyed when its last vDevice goes".into(),
    );
    if real_pci_tsm {
        check(
            field("real_bind", "layer") == "pci_tsm_bind"
                && field("real_bind", "driver_called").is_empty(),
            format!("real_bind: {:?}", get("real_bind")),
        );
        check(
            field("real_unbind", "layer") == "pci_tsm_unbind",
            format!("real_unbind: {:?}", get("real_unbind")),
        );
    }
    let bound = out.section("bound")?;
    check(
        bound.rc == Some(0) && bound.text.trim().is_empty(),
        format!("devices left bound: {}", bound.text.trim()),
    );

    if !errs.is_empty() {
        bail!(
            "{} of {n} checks failed (logs in {}):\n  {}",
            errs.len(),
            out.run_dir.display(),
            errs.join("\n  ")
        );
    }
    Ok(n)
}
