//! Value parsers for the command line and its `TSM_TRACE_*` variables.
//!
//! Each returns a message that says what was wrong and what is expected; clap puts the flag
//! (or variable) name in front of it. None of them panics, whatever the input (the tables in
//! the tests hold the hostile cases).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::events::{ProbeId, VmId, VmSelector};

/// The longest duration accepted: far beyond any useful grace or interval, and small enough
/// that nanoseconds fit in a `u64` everywhere downstream.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration as humantime spells it (`500ms`, `30s`, `5m`, `2h`, `1d`, `1h 30m`; `0`), at
/// most [`MAX_DURATION`]. A negative one is refused by name (the flags that take durations
/// let values start with `-`, so that this message, not clap's "unexpected argument", says
/// what is wrong).
pub fn duration(s: &str) -> Result<Duration, String> {
    if s.trim().starts_with('-') {
        return Err(format!(
            "{s:?}: negative durations are not allowed (e.g. 0s, 30s, 10m)"
        ));
    }
    let too_long = || {
        format!(
            "{s:?} is too long (at most {}d)",
            MAX_DURATION.as_secs() / 86400
        )
    };
    let d = humantime::parse_duration(s.trim()).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => too_long(),
        e => format!("{s:?} is not a duration ({e}; examples: 500ms, 30s, 5m, 1h 30m)"),
    })?;
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

pub fn level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level {s:?} (off, error, warn, info, debug, trace)"))
}

pub fn probe(s: &str) -> Result<ProbeId, String> {
    ProbeId::parse(s).ok_or_else(|| {
        let names: Vec<_> = ProbeId::ALL.iter().map(|p| p.as_str()).collect();
        format!("unknown probe {s:?}; known probes: {}", names.join(", "))
    })
}

/// Longest kernel symbol name (`KSYM_NAME_LEN`).
const MAX_SYMBOL: usize = 512;

/// A kernel function name: `[A-Za-z0-9_.]`, not starting with a digit, at most 512 bytes
/// (compiler suffixes such as `.isra.0` are allowed).
pub fn function(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SYMBOL
        && !s.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a kernel function name (letters, digits, '_' and '.', at most {MAX_SYMBOL} bytes)"
        ))
    }
}

/// `PROBE=FUNCTION`.
pub fn symbol(s: &str) -> Result<(ProbeId, String), String> {
    let (p, f) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: expected PROBE=FUNCTION, e.g. pci_tsm_bind=my_pci_tsm_bind")
    })?;
    Ok((probe(p)?, function(f)?))
}

/// The largest ring buffer accepted (1 GiB).
pub const MAX_RINGBUF: u32 = 1 << 30;

/// A ring buffer size: a power of two from 4096 (the page size) to [`MAX_RINGBUF`]; `k`/`m`
/// suffixes (KiB, MiB) allowed.
pub fn ringbuf(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (digits, mult) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1024u64),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 262144, 256k, 4m)"))?;
    let n = n.saturating_mul(mult);
    if n < 4096 || n > u64::from(MAX_RINGBUF) || !n.is_power_of_two() {
        return Err(format!(
            "{s:?}: must be a power of two from 4096 (the page size) to {MAX_RINGBUF} (1 GiB)"
        ));
    }
    Ok(n as u32)
}

/// The most bindings that can be tracked.
pub const MAX_BINDINGS: usize = 1 << 24;

pub fn max_bindings(s: &str) -> Result<usize, String> {
    count(s, MAX_BINDINGS)
}

/// A whole number from 1 to `max`; every refusal says the range.
fn count(s: &str, max: usize) -> Result<usize, String> {
    let t = s.trim();
    let range = format!("must be a whole number from 1 to {max}");
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: too large for any count (or in range, below).
        return match t.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            Ok(0) => Err(format!("{s:?}: {range}")),
            _ => Err(format!("{s:?} is too large: {range}")),
        };
    }
    Err(format!("{s:?} is not a count: {range}"))
}

/// The most HTTP connections that can be allowed at once.
pub const MAX_CONNECTIONS: usize = 65_536;

pub fn max_connections(s: &str) -> Result<usize, String> {
    count(s, MAX_CONNECTIONS)
}

/// A timeout: a [`duration`] that is not zero.
pub fn timeout(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: a timeout cannot be zero"));
    }
    Ok(d)
}

/// A PCI address: `DDDD:BB:DD.F` (domain, bus, device, function in hex), or `BB:DD.F` for
/// domain 0. The domain has up to 8 hex digits: Intel VMD puts its devices in domains from
/// `10000` up, which the kernel spells with 5 digits. Returned in the kernel's spelling (lower
/// case, at least four-digit domain), as sysfs and events name devices.
pub fn bdf(s: &str) -> Result<String, String> {
    let bad =
        || format!("{s:?} is not a PCI address: expected DDDD:BB:DD.F in hex, e.g. 0000:01:00.0");
    let t = s.trim();
    let parts: Vec<&str> = t.split(':').collect();
    let (domain, bus, devfn) = match parts.as_slice() {
        [d, b, df] => (*d, *b, *df),
        [b, df] => ("0000", *b, *df),
        _ => return Err(bad()),
    };
    let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
    let hex = |x: &str, max_len: usize| -> Result<u32, String> {
        if x.is_empty() || x.len() > max_len || !x.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u32::from_str_radix(x, 16).map_err(|_| bad())
    };
    let (d, b, dv, f) = (hex(domain, 8)?, hex(bus, 2)?, hex(dev, 2)?, hex(func, 1)?);
    if dv > 0x1f || f > 7 {
        return Err(format!(
            "{s:?}: device must be 00-1f and function 0-7 (e.g. 0000:01:00.0)"
        ));
    }
    Ok(format!("{d:04x}:{b:02x}:{dv:02x}.{f:x}"))
}

/// A VM selector: `kvm-<pid>` (its KVM `stats_id`, which the kernel spells so), a VMM pid,
/// or the name hash `vm#<12 hex digits>` that trace lines and `/bindings` show for a VM
/// without a known pid. A `struct kvm` pointer (`0x…`) is refused: tsm-trace never shows
/// kernel addresses, so none can be selected by.
pub fn vm(s: &str) -> Result<VmSelector, String> {
    let t = s.trim();
    let pid = |x: &str| {
        (!x.is_empty() && x.len() <= 10 && x.bytes().all(|b| b.is_ascii_digit()))
            .then(|| x.parse::<u32>().ok())
            .flatten()
            .filter(|n| *n > 0 && i32::try_from(*n).is_ok())
    };
    if t.starts_with("0x") || t.starts_with("0X") {
        return Err(format!(
            "{s:?} looks like a struct kvm pointer: tsm-trace keeps kernel addresses inside the process and no longer shows or accepts them; select the VM by kvm-<pid>, its VMM pid, or the vm#… name that trace lines and /bindings print"
        ));
    }
    let sel = match t.strip_prefix("kvm-") {
        Some(p) => pid(p).map(VmSelector::Pid),
        None if t.starts_with(crate::events::vm_id::PREFIX) => VmId::parse(t).map(VmSelector::Id),
        None => pid(t).map(VmSelector::Pid),
    };
    sel.ok_or_else(|| {
        format!("{s:?} is not a VM: expected kvm-<pid>, a VMM pid, or a vm#<12 hex digits> name")
    })
}

/// The longest path accepted for a file flag (`PATH_MAX`).
const MAX_PATH: usize = 4096;

/// A file that tsm-trace creates or keeps (e.g. `--vm-key`): an absolute path, at most 4096
/// bytes, not a directory (no trailing `/`), without `.` or `..` components.
pub fn state_file(s: &str) -> Result<std::path::PathBuf, String> {
    use std::path::{Component, Path};
    let p = Path::new(s);
    let bad = |why: &str| format!("{s:?} {why} (e.g. /run/tsm-trace/vm-key)");
    if s.is_empty() || s.len() > MAX_PATH {
        return Err(bad("is not a file path of 1 to 4096 bytes"));
    }
    if !p.is_absolute() {
        return Err(bad("is not an absolute path"));
    }
    if s.ends_with('/') || p.file_name().is_none() {
        return Err(bad("names a directory, not a file"));
    }
    if p.components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        || s.contains("/./")
        || s.ends_with("/.")
    {
        return Err(bad("has . or .. components"));
    }
    Ok(p.to_path_buf())
}

/// An errno: `EBUSY`, `ebusy`, `16` or `-16`.
pub fn errno(s: &str) -> Result<i32, String> {
    crate::errno::parse(s).ok_or_else(|| {
        format!("{s:?} is not an errno (a name such as EBUSY, or a number from 1 to 4095)")
    })
}

/// A listen address: `HOST:PORT` with an IP (`0.0.0.0:9477`, `[::1]:9477`), `:PORT` for
/// every IPv4 address (as Prometheus exporters write it), or `localhost:PORT`.
pub fn listen(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad = || {
        format!(
            "{s:?} is not a listen address: expected IP:PORT, e.g. 0.0.0.0:9477, [::1]:9477 or :9477"
        )
    };
    let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    match host {
        "" => Ok(SocketAddr::from(([0, 0, 0, 0], port))),
        "localhost" => ("localhost", port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// `TSM_TRACE_*` variables in `vars` that no flag reads (a typo, or a flag that was removed):
/// they would otherwise be ignored without a word.
pub fn unknown_env(vars: impl IntoIterator<Item = String>, known: &[&str]) -> Vec<String> {
    let mut unknown: Vec<String> = vars
        .into_iter()
        .filter(|k| k.starts_with("TSM_TRACE_") && !known.contains(&k.as_str()))
        .collect();
    unknown.sort();
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: PartialEq + std::fmt::Debug>(
        f: fn(&str) -> Result<T, String>,
        table: &[(&str, Result<T, &str>)],
    ) {
        for (input, want) in table {
            match (f(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(&got, w, "{input:?}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{input:?}: {e:?} lacks {w:?}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn durations() {
        check(
            duration,
            &[
                ("500ms", Ok(Duration::from_millis(500))),
                ("30s", Ok(Duration::from_secs(30))),
                ("1s 500ms", Ok(Duration::from_millis(1500))),
                ("5m", Ok(Duration::from_secs(300))),
                ("2h", Ok(Duration::from_secs(7200))),
                ("1h 30m", Ok(Duration::from_secs(5400))),
                ("1d", Ok(Duration::from_secs(86400))),
                ("0", Ok(Duration::ZERO)),
                ("0s", Ok(Duration::ZERO)),
                (" 10s ", Ok(Duration::from_secs(10))),
                ("365d", Ok(MAX_DURATION)),
                ("99999999999999999999999s", Err("too long")),
                ("366d", Err("too long")),
                ("7", Err("not a duration")),
                ("1.5s", Ok(Duration::from_millis(1500))),
                ("1e400", Err("not a duration")),
                (&"9".repeat(400), Err("too long")),
                ("-1s", Err("negative durations are not allowed")),
                (" -0s", Err("negative durations are not allowed")),
                ("", Err("not a duration")),
                ("s", Err("not a duration")),
                ("5x", Err("unknown time unit")),
                ("NaN", Err("not a duration")),
                ("inf", Err("not a duration")),
            ],
        );
        check(
            timeout,
            &[
                ("0s", Err("cannot be zero")),
                ("1s", Ok(Duration::from_secs(1))),
            ],
        );
    }

    #[test]
    fn bdfs() {
        check(
            bdf,
            &[
                ("0000:01:00.0", Ok("0000:01:00.0".to_string())),
                ("0000:AF:1f.7", Ok("0000:af:1f.7".to_string())),
                ("01:00.0", Ok("0000:01:00.0".to_string())),
                ("10000:01:00.0", Ok("10000:01:00.0".to_string())),
                ("1000A:E1:00.0", Ok("1000a:e1:00.0".to_string())),
                ("ffffffff:00:1f.7", Ok("ffffffff:00:1f.7".to_string())),
                ("100000000:01:00.0", Err("not a PCI address")),
                ("zz", Err("not a PCI address")),
                ("0000:zz:00.0", Err("not a PCI address")),
                ("0000:01:20.0", Err("device must be 00-1f")),
                ("0000:01:00.8", Err("function 0-7")),
                ("0000:01:00", Err("not a PCI address")),
                ("0000:01:00.", Err("not a PCI address")),
                ("0000:01:00.0.0", Err("not a PCI address")),
                ("0000:+1:00.0", Err("not a PCI address")),
                ("", Err("not a PCI address")),
                ("::.", Err("not a PCI address")),
            ],
        );
    }

    #[test]
    fn vms() {
        check(
            vm,
            &[
                ("kvm-4242", Ok(VmSelector::Pid(4242))),
                ("4242", Ok(VmSelector::Pid(4242))),
                (
                    "vm#0123456789ab",
                    Ok(VmSelector::Id(VmId::from_bits(0x0123_4567_89ab))),
                ),
                ("0xffff888012340000", Err("keeps kernel addresses inside")),
                ("0XFF3ABD9644194400", Err("select the VM by kvm-<pid>")),
                ("vm#0123", Err("not a VM")),
                ("vm#0123456789abc", Err("not a VM")),
                ("vm#", Err("not a VM")),
                ("kvm-2147483648", Err("not a VM")),
                ("kvm-", Err("not a VM")),
                ("kvm-0", Err("not a VM")),
                ("kvm-abc", Err("not a VM")),
                ("0", Err("not a VM")),
                ("99999999999", Err("not a VM")),
                ("0x", Err("pointer")),
                ("qemu", Err("not a VM")),
                ("", Err("not a VM")),
            ],
        );
    }

    #[test]
    fn state_files() {
        check(
            state_file,
            &[
                ("/run/tsm-trace/vm-key", Ok("/run/tsm-trace/vm-key".into())),
                ("vm-key", Err("not an absolute path")),
                ("", Err("1 to 4096 bytes")),
                (&format!("/{}", "a".repeat(4096)), Err("1 to 4096 bytes")),
                ("/run/tsm-trace/", Err("names a directory")),
                ("/", Err("names a directory")),
                ("/run/../etc/shadow", Err(". or ..")),
                ("/run/./x", Err(". or ..")),
            ],
        );
    }

    #[test]
    fn ring_sizes() {
        check(
            ringbuf,
            &[
                ("262144", Ok(262_144)),
                ("4096", Ok(4096)),
                ("256k", Ok(262_144)),
                ("4M", Ok(4 << 20)),
                ("1073741824", Ok(1 << 30)),
                ("2048", Err("power of two from 4096")),
                ("5000", Err("power of two")),
                ("2147483648", Err("power of two")),
                ("99999999999999999999", Err("not a byte count")),
                ("18014398509481984m", Err("power of two")),
                ("-4096", Err("not a byte count")),
                ("k", Err("not a byte count")),
                ("", Err("not a byte count")),
            ],
        );
    }

    #[test]
    fn counts() {
        check(
            max_bindings,
            &[
                ("65536", Ok(65_536)),
                ("0", Err("from 1 to 16777216")),
                (
                    "99999999999999999999999",
                    Err("too large: must be a whole number from 1 to 16777216"),
                ),
                (
                    "16777217",
                    Err("too large: must be a whole number from 1 to 16777216"),
                ),
                (
                    "-5",
                    Err("not a count: must be a whole number from 1 to 16777216"),
                ),
            ],
        );
        check(
            max_connections,
            &[
                ("512", Ok(512)),
                ("0", Err("from 1")),
                (
                    "x",
                    Err("not a count: must be a whole number from 1 to 65536"),
                ),
            ],
        );
    }

    #[test]
    fn errnos() {
        check(
            errno,
            &[
                ("EBUSY", Ok(16)),
                ("-16", Ok(16)),
                ("EWHAT", Err("not an errno")),
                ("-2147483648", Err("not an errno")),
                ("0", Err("not an errno")),
            ],
        );
    }

    #[test]
    fn listen_addresses() {
        check(
            listen,
            &[
                ("0.0.0.0:9477", Ok("0.0.0.0:9477".parse().unwrap())),
                ("[::1]:9477", Ok("[::1]:9477".parse().unwrap())),
                (":9477", Ok("0.0.0.0:9477".parse().unwrap())),
                ("0.0.0.0", Err("not a listen address")),
                ("0.0.0.0:99999", Err("not a listen address")),
                ("example.com:9477", Err("not a listen address")),
                ("", Err("not a listen address")),
                (":", Err("not a listen address")),
            ],
        );
        assert!(listen("localhost:9477").is_ok_and(|a| a.ip().is_loopback()));
    }

    #[test]
    fn functions_and_symbols() {
        check(
            function,
            &[
                ("pci_tsm_bind", Ok("pci_tsm_bind".to_string())),
                ("tsm_bind.isra.0", Ok("tsm_bind.isra.0".to_string())),
                ("", Err("not a kernel function name")),
                ("1abc", Err("not a kernel function name")),
                ("a b", Err("not a kernel function name")),
                ("a/b", Err("not a kernel function name")),
                (&"a".repeat(513), Err("not a kernel function name")),
            ],
        );
        check(
            symbol,
            &[
                (
                    "tsm_bind=my_bind",
                    Ok((ProbeId::TsmBind, "my_bind".to_string())),
                ),
                ("tsm_bind", Err("expected PROBE=FUNCTION")),
                ("nope=f", Err("unknown probe")),
                ("tsm_bind=", Err("not a kernel function name")),
            ],
        );
        check(
            probe,
            &[
                ("tsm_bind", Ok(ProbeId::TsmBind)),
                ("x", Err("unknown probe")),
            ],
        );
        check(
            level,
            &[
                ("debug", Ok(log::LevelFilter::Debug)),
                ("loud", Err("unknown log level")),
            ],
        );
    }

    #[test]
    fn unknown_env_vars_are_named() {
        let vars = [
            "TSM_TRACE_GRACE",
            "TSM_TRACE_GRACEE",
            "PATH",
            "TSM_TRACE_LISTN",
        ]
        .map(String::from);
        assert_eq!(
            unknown_env(vars, &["TSM_TRACE_GRACE"]),
            vec![
                "TSM_TRACE_GRACEE".to_string(),
                "TSM_TRACE_LISTN".to_string()
            ]
        );
    }
}

/// A user to switch to after attaching: `UID`, `UID:GID`, or a name from /etc/passwd (its
/// uid and primary gid). Root (0) is refused: the point is to stop being root.
pub fn user(s: &str) -> Result<(u32, u32), String> {
    user_from(
        s,
        &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
    )
}

fn user_from(s: &str, passwd: &str) -> Result<(u32, u32), String> {
    let t = s.trim();
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{v:?} is not a uid or gid (0–4294967294)"))
            .and_then(|n| {
                if n == u32::MAX {
                    Err("4294967295 is not a valid id".to_string())
                } else {
                    Ok(n)
                }
            })
    };
    let (uid, gid) = if t.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        match t.split_once(':') {
            Some((u, g)) => (num(u)?, num(g)?),
            None => {
                let u = num(t)?;
                (u, u)
            }
        }
    } else {
        let entry = passwd
            .lines()
            .find(|l| l.split(':').next() == Some(t))
            .ok_or_else(|| format!("no user {t:?} in /etc/passwd (give UID:GID instead)"))?;
        let f: Vec<&str> = entry.split(':').collect();
        match (f.get(2), f.get(3)) {
            (Some(u), Some(g)) => (num(u)?, num(g)?),
            _ => return Err(format!("the /etc/passwd entry of {t:?} is malformed")),
        }
    };
    if uid == 0 {
        return Err("uid 0 is root: give an unprivileged user (e.g. 65534:65534, nobody)".into());
    }
    Ok((uid, gid))
}

#[cfg(test)]
mod user_tests {
    use super::user_from;

    #[test]
    fn table() {
        let pw = "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/usr/sbin/nologin\nbad:x\n";
        for (input, want) in [
            ("65534", Ok((65534, 65534))),
            ("1000:100", Ok((1000, 100))),
            ("nobody", Ok((65534, 65534))),
            (" nobody ", Ok((65534, 65534))),
        ] {
            assert_eq!(user_from(input, pw), want, "{input}");
        }
        for (input, why) in [
            ("0", "root"),
            ("root", "root"),
            ("ghost", "no user"),
            ("bad", "malformed"),
            ("12x", "not a uid"),
            ("1:x", "not a uid"),
            ("4294967295", "not a valid id"),
            ("99999999999", "not a uid"),
        ] {
            let e = user_from(input, pw).unwrap_err();
            assert!(e.contains(why), "{input}: {e}");
        }
    }
}

/// `--deep MODULE:GLOB`.
pub fn deep_spec(s: &str) -> Result<crate::probes::deep::DeepSpec, String> {
    s.parse()
}

/// `--deep-max N`: 1..=1000 functions.
pub fn deep_max(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number of functions from 1 to 1000")),
    }
}
