//! Booting a prepared kernel in qemu (TCG, single-threaded) with the test initramfs, and
//! collecting its output.
//!
//! Two serial ports: ttyS0 is the console (kernel messages, init chatter, run.sh's own
//! stdout/stderr) and ttyS1 the data port that only `section` output goes to, so section
//! text is never interleaved with kernel messages. Both are written to files under
//! `.vm-cache/runs/<run>/` (`console.log`, `data.log`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use super::cache::cache_dir;
use super::initramfs::{self, InitramfsSpec};
use super::kernel::Kernel;

/// Patterns in the console log that mean the guest kernel crashed.
const CRASH_PATTERNS: &[&str] = &[
    "Kernel panic",
    "BUG: ",
    "kernel BUG at",
    "Oops: ",
    "general protection fault",
    "Unable to handle kernel",
    "stack-protector: Kernel stack is corrupted",
];

/// One `section NAME CMD...` block from the guest.
#[derive(Clone, Debug, Default)]
pub struct Section {
    /// Output of the command (stdout + stderr), `\r` removed.
    pub text: String,
    /// Exit code printed by the section helper (None if the END marker had none).
    pub rc: Option<i32>,
}

/// Everything a VM run produced.
#[derive(Clone, Debug)]
pub struct VmOutput {
    pub kernel_version: String,
    /// Serial console (ttyS0) log, `\r` removed.
    pub console: String,
    /// Sections by name, in the order they were printed (a repeated name keeps the last).
    pub sections: BTreeMap<String, Section>,
    /// Exit code of `/scenarios/run.sh`.
    pub run_rc: Option<i32>,
    /// Kernel warnings (`WARNING:` lines) seen on the console or in dmesg; not fatal.
    pub warnings: Vec<String>,
    /// Directory with console.log, data.log (and the initramfs with `keep`).
    pub run_dir: PathBuf,
    pub elapsed: Duration,
}

impl VmOutput {
    /// Text of a section, or an error naming the run's logs.
    pub fn section(&self, name: &str) -> Result<&Section> {
        self.sections.get(name).with_context(|| {
            format!(
                "guest printed no section {name:?} (logs in {})",
                self.run_dir.display()
            )
        })
    }
}

/// Options of one VM run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Kill the guest after this long.
    pub timeout: Duration,
    /// Keep the initramfs next to the logs.
    pub keep: bool,
    /// Extra kernel command-line arguments.
    pub extra_cmdline: String,
    pub memory_mb: u32,
    /// Guest TCP port to reach from the host: the guest gets a virtio-net NIC on qemu user
    /// networking (guest 10.0.2.15/24 once configured, host = 10.0.2.2) and this port is
    /// forwarded from a free port on the host's 127.0.0.1 ([`VmHandle::host_port`]). The
    /// NIC's driver modules (and their dependencies) are put, uncompressed, into
    /// [`NET_MODULES_DIR`] as `NN-name.ko`; the script loads them in name order and
    /// configures the interface itself (see `tests/vm/scenarios/e2e.sh`). None: no network.
    pub hostfwd: Option<u16>,
    /// Boot a q35 machine with PCIe endpoints the real PCI TSM core accepts once
    /// `tsm_linktsm` marks them TEE-capable (00:04.0, 00:04.1, 00:05.0), keeping the `pc`
    /// machine's 00:02.0 (VGA) and 00:03.0 (e1000) as plain PCI devices. false: qemu's
    /// default `pc` machine.
    pub tee_pcie: bool,
    /// With [`RunOptions::tee_pcie`]: also a PCIe root port at 00:06.0 with an e1000e
    /// endpoint behind it (0000:01:00.0), the pair a PCIe IDE stream needs (q35 endpoints on
    /// pcie.0 are RC-integrated and `pci_ide_stream_alloc` refuses them).
    pub ide_pcie: bool,
    /// Boot this initramfs (made by the caller; removed after the run unless `keep`)
    /// instead of the test initramfs; `extra_files` and the script are then not used.
    pub initrd: Option<PathBuf>,
    /// The deterministic clock (`-icount shift=0,sleep=off`, TCG only): the guest's clock
    /// counts executed guest instructions (1 ns = 1 instruction) and an idle guest skips
    /// ahead at once. Timings become instruction counts that repeat run to run; for the
    /// benchmarks, not for the suites (measured: it made the crash suite about 2x slower).
    pub icount: bool,
}

/// qemu's deterministic clock, [`RunOptions::icount`].
pub const ICOUNT: &str = "shift=0,sleep=off";

/// qemu arguments for [`RunOptions::tee_pcie`]. Explicit devices only (`-vga none`, `-nic
/// none`); `romfile=` because no option ROM is needed (nor installed) for them.
fn tee_pcie_args(cmd: &mut Command) {
    cmd.args(["-machine", "q35", "-vga", "none", "-nic", "none"])
        .args(["-device", "VGA,bus=pcie.0,addr=0x2"])
        .args(["-device", "e1000,bus=pcie.0,addr=0x3,romfile="])
        .args([
            "-device",
            "e1000e,bus=pcie.0,addr=0x4.0,multifunction=on,romfile=",
        ])
        .args(["-device", "e1000e,bus=pcie.0,addr=0x4.1,romfile="])
        .args(["-device", "e1000e,bus=pcie.0,addr=0x5.0,romfile="]);
}

/// qemu arguments for [`RunOptions::ide_pcie`] (after [`tee_pcie_args`]).
fn ide_pcie_args(cmd: &mut Command) {
    cmd.args([
        "-device",
        "pcie-root-port,id=rp1,bus=pcie.0,addr=0x6,chassis=1",
    ])
    .args(["-device", "e1000e,bus=rp1,romfile="]);
}

impl Default for RunOptions {
    fn default() -> Self {
        let timeout = std::env::var("TSM_VM_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300);
        RunOptions {
            timeout: Duration::from_secs(timeout),
            keep: false,
            extra_cmdline: String::new(),
            memory_mb: 1024,
            hostfwd: None,
            tee_pcie: false,
            ide_pcie: false,
            initrd: None,
            icount: false,
        }
    }
}

/// Single-threaded TCG, the accelerator every VM falls back to.
const TCG: &str = "tcg,thread=single";

/// Set once a KVM guest failed where the probe said KVM works: every later VM of this
/// process runs under [`TCG`].
static FORCE_TCG: AtomicBool = AtomicBool::new(false);

/// Distinguishes the run directories of VMs this process starts in the same millisecond.
static RUN_SEQ: AtomicU64 = AtomicU64::new(0);

/// KVM where it works, TCG otherwise. `/dev/kvm` opening is not enough: on some machines qemu
/// aborts while setting up the vCPU (`kvm_buf_set_msrs`), so a paused qemu is started once per
/// process with KVM and must still be alive after a second. TCG runs single-threaded: with
/// multi-threaded TCG one guest in 27 oopsed while kprobes were removed.
fn default_accel() -> &'static str {
    static ACCEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    ACCEL.get_or_init(|| {
        let tcg = TCG;
        if fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            return tcg;
        }
        let probe = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "kvm",
                "-cpu",
                "max",
                "-m",
                "64",
                // Run the vCPU (no -S): on some hosts KVM fails only once a vCPU's MSRs are
                // set (`kvm_buf_set_msrs ... failed`), which a paused guest never reaches.
                "-nodefaults",
                "-no-reboot",
            ])
            .args(["-display", "none", "-monitor", "none", "-serial", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = probe else { return tcg };
        std::thread::sleep(Duration::from_millis(1500));
        let alive = matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let _ = child.wait();
        if alive {
            println!("vm: using KVM (set TSM_VM_ACCEL=tcg,thread=single to force emulation)");
            "kvm"
        } else {
            println!("vm: /dev/kvm is present but qemu cannot start a KVM guest here; using TCG");
            tcg
        }
    })
}

/// Guest directory of the NIC driver modules added with [`RunOptions::hostfwd`].
pub const NET_MODULES_DIR: &str = "/lib/modules/net";

/// Debian modules the virtio-net NIC needs (dependencies are added; built-in ones skipped).
const NET_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

/// Boot `kernel` with `script` as `/scenarios/run.sh` and `extra_files` (host path, guest path)
/// in the initramfs; return its output. Fails if the guest crashed, timed out or did not
/// reach the end of init.
pub fn run_in_vm_with(
    kernel: &Kernel,
    extra_files: &[(PathBuf, String)],
    script: &str,
    opts: &RunOptions,
) -> Result<VmOutput> {
    let r = spawn_in_vm(kernel, extra_files, script, opts)?.wait();
    match r {
        // KVM that passed the probe can still fail a real guest on a loaded host: once, fall
        // back to TCG for this and every later run rather than fail the suite.
        Err(e)
            if std::env::var_os("TSM_VM_ACCEL").is_none()
                && !FORCE_TCG.load(Ordering::Relaxed)
                && default_accel() == "kvm"
                && format!("{e:#}").to_ascii_lowercase().contains("kvm") =>
        {
            println!("vm: the KVM guest failed ({e:#}); retrying under TCG");
            // Process-wide, not through the environment: other VMs may be starting on other
            // threads (`vm-test --jobs`).
            FORCE_TCG.store(true, Ordering::Relaxed);
            spawn_in_vm(kernel, extra_files, script, opts)?.wait()
        }
        r => r,
    }
}

/// A guest started by [`spawn_in_vm`], running while the host does other things. Dropping it
/// kills qemu.
pub struct VmHandle {
    child: Option<Child>,
    kernel_version: String,
    run_dir: PathBuf,
    initrd: PathBuf,
    console_log: PathBuf,
    data_log: PathBuf,
    start: Instant,
    opts: RunOptions,
    /// Host port on 127.0.0.1 forwarded to the guest's [`RunOptions::hostfwd`] port.
    pub host_port: Option<u16>,
}

/// Like [`run_in_vm_with`] but returns as soon as qemu has started; [`VmHandle::wait`] then
/// collects the output exactly as `run_in_vm_with` does (same checks, same timeout).
pub fn spawn_in_vm(
    kernel: &Kernel,
    extra_files: &[(PathBuf, String)],
    script: &str,
    opts: &RunOptions,
) -> Result<VmHandle> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    // Unique per VM even with several booting at once (`vm-test --jobs`): time, kernel, this
    // process and its VM count. The time leads so that names sort oldest first (`prune_runs`).
    let run_dir = cache_dir().join("runs").join(format!(
        "{stamp}-{}-{}-{}",
        kernel.version,
        std::process::id(),
        RUN_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let initrd = opts
        .initrd
        .clone()
        .unwrap_or_else(|| run_dir.join("initramfs.cpio"));
    let mut files = extra_files.to_vec();
    let mut host_port = None;
    if opts.hostfwd.is_some() {
        let mods = kernel
            .module_closure(NET_MODULES)
            .context("finding the virtio-net driver modules")?;
        let mod_dir = run_dir.join("net-modules");
        for (i, m) in mods.iter().enumerate() {
            let plain = initramfs::plain_module(m, &mod_dir)?;
            let name = plain.file_name().unwrap_or_default().to_string_lossy();
            files.push((plain.clone(), format!("{NET_MODULES_DIR}/{i:02}-{name}")));
        }
        host_port = Some(free_port()?);
    }
    if opts.initrd.is_none() {
        build_test_initramfs(kernel, script, &files, &initrd)?;
    }
    let console_log = run_dir.join("console.log");
    let data_log = run_dir.join("data.log");

    let accel = std::env::var("TSM_VM_ACCEL").unwrap_or_else(|_| {
        if FORCE_TCG.load(Ordering::Relaxed) {
            TCG.to_string()
        } else {
            default_accel().to_string()
        }
    });
    let mut cmdline = "console=ttyS0 quiet panic=-1 oops=panic".to_owned();
    if !opts.extra_cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&opts.extra_cmdline);
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", &accel, "-cpu", "max", "-smp", "2"]);
    if opts.icount {
        if !accel.starts_with("tcg") {
            anyhow::bail!(
                "the deterministic clock (-icount) needs TCG, not {accel}: set TSM_VM_ACCEL=tcg,thread=single"
            );
        }
        cmd.args(["-icount", ICOUNT]);
    }
    cmd.args(["-m", &opts.memory_mb.to_string()])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console_log.display()))
        .arg("-serial")
        .arg(format!("file:{}", data_log.display()))
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if opts.tee_pcie {
        tee_pcie_args(&mut cmd);
        if opts.ide_pcie {
            ide_pcie_args(&mut cmd);
        }
    }
    if let (Some(guest), Some(host)) = (opts.hostfwd, host_port) {
        cmd.arg("-netdev")
            .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{host}-:{guest}"))
            .args(["-device", "virtio-net-pci,netdev=n0"]);
    }
    let start = Instant::now();
    let child = cmd.spawn().context("starting qemu-system-x86_64")?;
    Ok(VmHandle {
        child: Some(child),
        kernel_version: kernel.version.clone(),
        run_dir,
        initrd,
        console_log,
        data_log,
        start,
        opts: opts.clone(),
        host_port,
    })
}

/// The test initramfs of [`spawn_in_vm`]: busybox, `/init`, the fixtures, the script.
fn build_test_initramfs(
    kernel: &Kernel,
    script: &str,
    files: &[(PathBuf, String)],
    initrd: &std::path::Path,
) -> Result<()> {
    initramfs::build(
        &InitramfsSpec {
            standin_ko: &kernel.standin_ko,
            linktsm_ko: kernel
                .linktsm_ko
                .is_file()
                .then_some(kernel.linktsm_ko.as_path()),
            latemod_ko: kernel
                .latemod_ko
                .is_file()
                .then_some(kernel.latemod_ko.as_path()),
            script,
            extra_files: files,
        },
        initrd,
    )
}

/// A port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before (two VMs started at once must not both be given a port neither has bound yet).
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        let port = l.local_addr()?.port();
        if given.insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 that this process had not handed out already")
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl VmHandle {
    /// Is qemu still running?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kill qemu now; a following [`VmHandle::wait`] reports the guest as stopped early.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
    }

    /// Wait for the guest to power off (or the timeout) and collect its output; fails if the
    /// guest crashed, timed out or did not reach the end of init.
    pub fn wait(mut self) -> Result<VmOutput> {
        let mut child = self.child.take().context("VM already waited for")?;
        self.collect(&mut child)
    }

    fn collect(&self, child: &mut Child) -> Result<VmOutput> {
        let (kernel_version, run_dir, initrd) = (&self.kernel_version, &self.run_dir, &self.initrd);
        let (console_log, data_log, start, opts) =
            (&self.console_log, &self.data_log, self.start, &self.opts);
        let mut timed_out = false;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if start.elapsed() > opts.timeout {
                timed_out = true;
                let _ = child.kill();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let elapsed = start.elapsed();
        let qemu_err = {
            use std::io::Read;
            let mut s = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut s);
            }
            s
        };
        let read = |p: &PathBuf| {
            fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
                .unwrap_or_default()
        };
        let console = read(console_log);
        let data = read(data_log);
        if !opts.keep {
            let _ = fs::remove_file(initrd);
        }
        let (sections, run_rc, done) = parse_data(&data);
        let mut warnings: Vec<String> = console
            .lines()
            .chain(
                sections
                    .get("dmesg")
                    .map(|s| s.text.as_str())
                    .unwrap_or("")
                    .lines(),
            )
            .filter(|l| l.contains("WARNING:"))
            .map(str::to_owned)
            .collect();
        warnings.dedup();
        let out = VmOutput {
            kernel_version: kernel_version.to_owned(),
            console,
            sections,
            run_rc,
            warnings,
            run_dir: run_dir.clone(),
            elapsed,
        };

        let dmesg = out
            .sections
            .get("dmesg")
            .map(|s| s.text.as_str())
            .unwrap_or("");
        if let Some(line) = out
            .console
            .lines()
            .chain(dmesg.lines())
            .find(|l| CRASH_PATTERNS.iter().any(|p| l.contains(p)))
        {
            bail!(
                "guest kernel {} crashed: {line:?}\n--- console tail ---\n{}\n(logs in {})",
                kernel_version,
                tail(&out.console, 40),
                run_dir.display()
            );
        }
        if timed_out {
            bail!(
                "guest {} timed out after {:?}\n--- console tail ---\n{}\n(logs in {})",
                kernel_version,
                opts.timeout,
                tail(&out.console, 40),
                run_dir.display()
            );
        }
        if !done {
            bail!(
                "guest {} stopped before init finished (qemu {status}){}\n--- console tail ---\n{}\n(logs in {})",
                kernel_version,
                if qemu_err.trim().is_empty() {
                    String::new()
                } else {
                    format!("\nqemu: {}", qemu_err.trim())
                },
                tail(&out.console, 40),
                run_dir.display()
            );
        }
        Ok(out)
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Split the data-port log into sections; also return run.sh's exit code and whether init
/// reached its end.
pub fn parse_data(data: &str) -> (BTreeMap<String, Section>, Option<i32>, bool) {
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut run_rc = None;
    let mut done = false;
    for line in data.lines() {
        if let Some(name) = line
            .strip_prefix("=== BEGIN ")
            .and_then(|r| r.strip_suffix(" ==="))
        {
            current = Some((name.to_owned(), String::new()));
            continue;
        }
        if let Some(rest) = line
            .strip_prefix("=== END ")
            .and_then(|r| r.strip_suffix(" ==="))
        {
            let (name, rc) = match rest.rsplit_once(" rc=") {
                Some((n, rc)) => (n, rc.parse().ok()),
                None => (rest, None),
            };
            if let Some((cur, text)) = current.take() {
                if cur == name {
                    sections.insert(name.to_owned(), Section { text, rc });
                    continue;
                }
                // Mismatched END: keep what we had under its own name.
                sections.insert(cur, Section { text, rc: None });
            }
            continue;
        }
        if let Some(rc) = line
            .strip_prefix("=== RUN_RC ")
            .and_then(|r| r.strip_suffix(" ==="))
        {
            run_rc = rc.parse().ok();
            continue;
        }
        if line == "=== TSM-VM DONE ===" {
            done = true;
            continue;
        }
        if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    if let Some((name, text)) = current {
        sections.insert(name, Section { text, rc: None });
    }
    (sections, run_rc, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sections() {
        let data = "junk\n=== BEGIN a ===\nx\ny\n=== END a rc=0 ===\n=== BEGIN b c ===\n=== END b c rc=3 ===\n=== RUN_RC 0 ===\n=== TSM-VM DONE ===\n";
        let (s, rc, done) = parse_data(data);
        assert_eq!(s["a"].text, "x\ny\n");
        assert_eq!(s["a"].rc, Some(0));
        assert_eq!(s["b c"].rc, Some(3));
        assert_eq!(rc, Some(0));
        assert!(done);
    }

    #[test]
    fn unterminated_section_kept() {
        let (s, _, done) = parse_data("=== BEGIN a ===\npartial\n");
        assert_eq!(s["a"].text, "partial\n");
        assert!(!done);
    }
}
