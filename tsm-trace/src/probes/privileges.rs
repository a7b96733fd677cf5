//! Privileges: say in one line what is missing, instead of an aya error chain.

/// Capability numbers (linux/capability.h).
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_SYSLOG: u32 = 34;
pub(crate) const CAP_PERFMON: u32 = 38;
pub(crate) const CAP_BPF: u32 = 39;

/// `kernel.perf_event_paranoid` of 3 or more (a Debian patch) refuses `perf_event_open`, and so
/// attaching kprobes, to anything but CAP_SYS_ADMIN.
pub fn perf_paranoid_needs_sys_admin() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|p| p >= 3)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrivilegeError {
    #[error(
        "tsm-trace needs root, or CAP_BPF + CAP_PERFMON (kernel 5.8+; plus CAP_SYS_ADMIN where kernel.perf_event_paranoid=3), to load and attach its probes; missing: {missing}. Run it with sudo, or give the binary the capabilities: setcap cap_bpf,cap_perfmon,cap_sys_admin+ep $(command -v tsm-trace)"
    )]
    Missing { missing: String },
    #[error(
        "this kernel has kernel.perf_event_paranoid=3 (a Debian setting), so attaching kprobes needs CAP_SYS_ADMIN, which tsm-trace lacks. Run it as root, add CAP_SYS_ADMIN, or lower the setting: sysctl kernel.perf_event_paranoid=2"
    )]
    ParanoidNeedsSysAdmin,
    #[error("cannot read effective capabilities from /proc/self/status: {0}")]
    Unreadable(String),
}

/// Checks the effective capability set of this process.
pub fn check_privileges() -> Result<(), PrivilegeError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| PrivilegeError::Unreadable(e.to_string()))?;
    let caps = parse_cap_eff(&status)
        .ok_or_else(|| PrivilegeError::Unreadable("no CapEff line".into()))?;
    check_caps(caps)?;
    if caps & (1u64 << CAP_SYS_ADMIN) == 0 && perf_paranoid_needs_sys_admin() {
        return Err(PrivilegeError::ParanoidNeedsSysAdmin);
    }
    Ok(())
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

fn check_caps(caps: u64) -> Result<(), PrivilegeError> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    Err(PrivilegeError::Missing {
        missing: missing.join(" + "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_missing_capabilities() {
        assert!(check_caps(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        let e = check_caps(1 << CAP_BPF).unwrap_err();
        assert_eq!(
            e,
            PrivilegeError::Missing {
                missing: "CAP_PERFMON".into()
            }
        );
        let e = check_caps(0).unwrap_err().to_string();
        assert!(e.contains("missing: CAP_BPF + CAP_PERFMON"), "{e}");
    }

    #[test]
    fn parses_status() {
        let s = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ff_ffff_ffff));
    }
}
