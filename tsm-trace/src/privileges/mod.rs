//! Privileges: what tsm-trace needs (capabilities, `perf_event_paranoid`) and says in one line
//! what is missing, instead of an aya error chain; dropping capabilities after attach and
//! switching user (`capabilities`); handing the files it writes to that user (`ownership`).

pub mod capabilities;
pub mod ownership;

use caps::{CapSet, Capability, CapsHashSet};

/// `kernel.perf_event_paranoid`, if readable.
pub fn perf_event_paranoid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
}

/// `kernel.perf_event_paranoid` of 3 or more (a Debian patch) refuses `perf_event_open`, and so
/// attaching kprobes, to anything but CAP_SYS_ADMIN.
pub fn perf_paranoid_needs_sys_admin() -> bool {
    perf_event_paranoid().is_some_and(|p| p >= 3)
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "tsm-trace needs root, or CAP_BPF + CAP_PERFMON (kernel 5.8+; plus CAP_SYS_ADMIN where kernel.perf_event_paranoid=3), to load and attach its probes; missing: {missing}. Run it with sudo, or give the binary the capabilities (CAP_SYSLOG so that /proc/kallsyms shows addresses): setcap cap_bpf,cap_perfmon,cap_syslog,cap_sys_admin+ep $(command -v tsm-trace)"
    )]
    Missing { missing: String },
    #[error(
        "this kernel has kernel.perf_event_paranoid=3 (a Debian setting), so attaching kprobes needs CAP_SYS_ADMIN, which tsm-trace lacks. Run it as root, add CAP_SYS_ADMIN, or lower the setting: sysctl kernel.perf_event_paranoid=2"
    )]
    ParanoidNeedsSysAdmin,
    #[error("cannot read the effective capabilities of this process")]
    Unreadable(#[source] caps::errors::CapsError),
}

/// The effective capability set of this process.
pub fn effective() -> Result<CapsHashSet, PrivilegeError> {
    caps::read(None, CapSet::Effective).map_err(PrivilegeError::Unreadable)
}

/// Checks the effective capability set of this process.
pub fn check_privileges() -> Result<(), PrivilegeError> {
    check(&effective()?, perf_paranoid_needs_sys_admin())
}

/// Can a process with `caps` load and attach the probes (`paranoid3`: perf_event_paranoid
/// is 3 or more)?
pub fn check(caps: &CapsHashSet, paranoid3: bool) -> Result<(), PrivilegeError> {
    check_caps(caps)?;
    if !caps.contains(&Capability::CAP_SYS_ADMIN) && paranoid3 {
        return Err(PrivilegeError::ParanoidNeedsSysAdmin);
    }
    Ok(())
}

fn check_caps(caps: &CapsHashSet) -> Result<(), PrivilegeError> {
    let has = |c| caps.contains(&c);
    if has(Capability::CAP_SYS_ADMIN) || (has(Capability::CAP_BPF) && has(Capability::CAP_PERFMON))
    {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (Capability::CAP_BPF, "CAP_BPF"),
        (Capability::CAP_PERFMON, "CAP_PERFMON"),
    ]
    .into_iter()
    .filter(|(c, _)| !has(*c))
    .map(|(_, n)| n)
    .collect();
    Err(PrivilegeError::Missing {
        missing: missing.join(" + "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(c: &[Capability]) -> CapsHashSet {
        c.iter().copied().collect()
    }

    #[test]
    fn names_missing_capabilities() {
        use Capability::*;
        assert!(check_caps(&set(&[CAP_SYS_ADMIN])).is_ok());
        assert!(check_caps(&set(&[CAP_BPF, CAP_PERFMON])).is_ok());
        let e = check_caps(&set(&[CAP_BPF])).unwrap_err();
        assert!(
            matches!(&e, PrivilegeError::Missing { missing } if missing == "CAP_PERFMON"),
            "{e:?}"
        );
        let e = check_caps(&set(&[])).unwrap_err().to_string();
        assert!(e.contains("missing: CAP_BPF + CAP_PERFMON"), "{e}");
        // The setcap it suggests gives everything a full start needs, CAP_SYSLOG included.
        assert!(
            e.contains("setcap cap_bpf,cap_perfmon,cap_syslog,cap_sys_admin+ep"),
            "{e}"
        );
    }

    #[test]
    fn paranoid_three_needs_sys_admin() {
        use Capability::*;
        assert!(matches!(
            check(&set(&[CAP_BPF, CAP_PERFMON]), true),
            Err(PrivilegeError::ParanoidNeedsSysAdmin)
        ));
        assert!(check(&set(&[CAP_BPF, CAP_PERFMON]), false).is_ok());
        assert!(check(&set(&[CAP_SYS_ADMIN]), true).is_ok());
    }
}
