//! Other tsm-trace sessions on the same functions: their programs run on every call we
//! time, so our latencies include their cost (three concurrent sessions read a 7.75 µs
//! `tsm_bind` as 39.5, 307.8 and 332 µs). At the start of `trace`, `run` and `check`, the
//! kernel's programs are listed (`BPF_PROG_GET_NEXT_ID`, `BPF_OBJ_GET_INFO_BY_FD`) and
//! those named like ours ([`super::unpin::program_names`], cut to the kernel's 15 bytes)
//! that are neither this process's own nor held by links pinned under this daemon's pin
//! root (a previous epoch of the same `run`, handed over) are counted, with the
//! processes that hold them (`/proc/PID/fdinfo`'s `prog_id`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    os::fd::AsFd,
    path::Path,
};

use aya_obj::generated::{bpf_link_info, bpf_prog_info};

use super::bpf_sys::{c_name, kernel_name, next_prog_id, obj_get, obj_info, prog_by_id};

/// A loaded program as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub id: u32,
    pub name: String,
}

/// Other tsm-trace programs loaded in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Others {
    pub programs: usize,
    /// Processes holding them, as `comm/pid`.
    pub holders: BTreeSet<String>,
    /// Of them, held by no process (pinned links, or a process /proc does not show).
    pub unheld: usize,
}

impl Others {
    /// The warning, or `None` if there is nothing to warn about.
    pub fn warning(&self) -> Option<String> {
        if self.programs == 0 {
            return None;
        }
        let mut by = Vec::new();
        if !self.holders.is_empty() {
            by.push(format!(
                "held by {}",
                self.holders.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if self.unheld > 0 {
            by.push(format!(
                "{} held by no process visible here (pinned by another daemon, or in another pid namespace)",
                self.unheld
            ));
        }
        Some(format!(
            "{} other tsm-trace program{} already attached ({}): they run on every call these probes time, so the latencies measured here include their cost; stop the other sessions (`tsm-trace unpin` removes a stopped daemon's pins)",
            self.programs,
            if self.programs == 1 { " is" } else { "s are" },
            by.join("; ")
        ))
    }
}

/// Which of `loaded` are other sessions' programs: named like ours (`ours`, full names),
/// not in `own` (this process's programs and our pinned epochs'). `holders` maps a
/// program id to the processes holding it.
pub fn classify(
    loaded: &[Program],
    ours: &[&str],
    own: &BTreeSet<u32>,
    holders: &BTreeMap<u32, BTreeSet<String>>,
) -> Others {
    let names: BTreeSet<&str> = ours.iter().map(|n| kernel_name(n)).collect();
    let mut o = Others::default();
    for p in loaded {
        if own.contains(&p.id) || !names.contains(p.name.as_str()) {
            continue;
        }
        o.programs += 1;
        match holders.get(&p.id) {
            Some(h) if !h.is_empty() => o.holders.extend(h.iter().cloned()),
            _ => o.unheld += 1,
        }
    }
    o
}

/// Every program loaded in the kernel (needs CAP_SYS_ADMIN); programs that go away
/// meanwhile are skipped.
pub fn loaded() -> io::Result<Vec<Program>> {
    let mut out = Vec::new();
    let mut id = 0;
    while let Some(next) = next_prog_id(id)? {
        id = next;
        let Ok(fd) = prog_by_id(id) else { continue };
        // SAFETY: a plain-data UAPI struct; all zeroes is its empty value.
        let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
        if obj_info(fd.as_fd(), &mut info).is_ok() {
            out.push(Program {
                id,
                name: c_name(&info.name),
            });
        }
    }
    Ok(out)
}

/// `prog_id` in an fdinfo text (BPF programs and links show it).
fn fdinfo_prog_id(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Program ids held by process `pid` through BPF program or link descriptors.
fn held_by(proc: &Path, pid: &str) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let Ok(rd) = fs::read_dir(proc.join(pid).join("fd")) else {
        return ids;
    };
    for e in rd.flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        let t = target.as_os_str().as_encoded_bytes();
        if !(t == b"anon_inode:bpf-prog" || t.starts_with(b"anon_inode:bpf_link")) {
            continue;
        }
        let info = proc.join(pid).join("fdinfo").join(e.file_name());
        if let Some(id) = fs::read_to_string(info)
            .ok()
            .as_deref()
            .and_then(fdinfo_prog_id)
        {
            ids.insert(id);
        }
    }
    ids
}

/// Every process's held program ids, by id (`comm/pid`), and this process's own ids.
fn holders(proc: &Path) -> (BTreeMap<u32, BTreeSet<String>>, BTreeSet<u32>) {
    let me = std::process::id().to_string();
    let own = held_by(proc, "self");
    let mut by_id: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let Ok(rd) = fs::read_dir(proc) else {
        return (by_id, own);
    };
    for e in rd.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let ids = held_by(proc, &pid);
        if ids.is_empty() {
            continue;
        }
        let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let who = format!("{}/{pid}", comm.trim());
        for id in ids {
            by_id.entry(id).or_default().insert(who.clone());
        }
    }
    (by_id, own)
}

/// Programs of the links pinned under `root` (`<root>/<layout>/links/*`): this daemon's
/// epochs, its own even when a previous process pinned them.
fn pinned_programs(root: &Path) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let Ok(layouts) = fs::read_dir(root) else {
        return ids;
    };
    for l in layouts.flatten() {
        let Ok(links) = fs::read_dir(l.path().join("links")) else {
            continue;
        };
        for link in links.flatten() {
            let Ok(fd) = obj_get(&link.path()) else {
                continue;
            };
            // SAFETY: a plain-data UAPI struct; all zeroes is its empty value.
            let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
            if obj_info(fd.as_fd(), &mut info).is_ok() {
                ids.insert(info.prog_id);
            }
        }
    }
    ids
}

/// Other tsm-trace programs loaded now: not this process's, not pinned under `pin_root`.
pub fn find(pin_root: Option<&Path>) -> io::Result<Others> {
    let loaded = loaded()?;
    let (holders, mut own) = holders(Path::new("/proc"));
    if let Some(root) = pin_root {
        own.extend(pinned_programs(root));
    }
    Ok(classify(
        &loaded,
        &super::unpin::program_names(),
        &own,
        &holders,
    ))
}

/// At the start of `trace`, `run` and `check` (after this session's programs are loaded):
/// warns once if other tsm-trace programs are attached.
pub fn warn_if_any(pin_root: Option<&Path>) {
    match find(pin_root) {
        Ok(o) => {
            if let Some(w) = o.warning() {
                log::warn!("{w}");
            }
        }
        Err(e) => log::debug!("could not list the kernel's BPF programs: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u32, name: &str) -> Program {
        Program {
            id,
            name: name.into(),
        }
    }

    #[test]
    fn counts_other_sessions_not_ours_nor_other_tools() {
        let ours = ["tsm_bind", "tsm_bind_return", "pci_tsm_unbind_any_return"];
        let loaded = [
            p(1, "tsm_bind"),        // this process
            p(2, "tsm_bind_return"), // our previous epoch, pinned
            p(3, "tsm_bind"),        // another trace session
            p(4, "tsm_bind_return"), // the same session
            p(5, "pci_tsm_unbind_"), // a daemon gone, its pins left: names cut to 15 bytes
            p(6, "sd_fw_ingress"),   // another tool
        ];
        let own = BTreeSet::from([1, 2]);
        let holders = BTreeMap::from([
            (1, BTreeSet::from(["tsm-trace/100".to_string()])),
            (3, BTreeSet::from(["tsm-trace/200".to_string()])),
            (4, BTreeSet::from(["tsm-trace/200".to_string()])),
            (6, BTreeSet::from(["systemd/1".to_string()])),
        ]);
        let o = classify(&loaded, &ours, &own, &holders);
        assert_eq!(o.programs, 3);
        assert_eq!(o.unheld, 1);
        assert_eq!(o.holders, BTreeSet::from(["tsm-trace/200".to_string()]));
        let w = o.warning().unwrap();
        assert!(
            w.starts_with("3 other tsm-trace programs are already attached (held by tsm-trace/200; 1 held by no process"),
            "{w}"
        );
        assert!(
            w.contains("latencies measured here include their cost"),
            "{w}"
        );
        // Alone: nothing to say.
        let alone = classify(&loaded[..2], &ours, &own, &holders);
        assert_eq!(alone.warning(), None);
    }

    #[test]
    fn fdinfo_names_the_program() {
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t2\nprog_id:\t42\n";
        assert_eq!(fdinfo_prog_id(prog), Some(42));
        let link = "link_type:\tperf\nlink_id:\t7\nprog_tag:\tab\nprog_id:\t43\n";
        assert_eq!(fdinfo_prog_id(link), Some(43));
        assert_eq!(fdinfo_prog_id("pos:\t0\n"), None);
    }
}
