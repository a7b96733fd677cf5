//! Fetching Debian kernels (image, modules, headers, kbuild) without touching the system's apt
//! configuration: every apt call gets a private sources dir, lists dir and cache dir under
//! `.vm-cache/apt/<root>/`, packages are fetched with `apt-get download` and unpacked with
//! `dpkg -x` into `.vm-cache/kernels/<version>/root/`. Nothing is installed into `/`.
//!
//! A prepared kernel is marked by `.vm-cache/kernels/<version>/ready`; with it (and apt lists
//! already present) nothing touches the network.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use super::cache::cache_dir;
use crate::util::{output as run_cmd_output, run_quiet as run_cmd};

const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
const DEBIAN_SECURITY: &str = "http://deb.debian.org/debian-security";
/// The Debian mirror (`TSM_VM_DEBIAN_MIRROR` overrides it).
pub fn debian_mirror() -> String {
    std::env::var("TSM_VM_DEBIAN_MIRROR").unwrap_or_else(|_| DEBIAN_MIRROR.into())
}

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A private apt "root" (sources + lists + cache), one per Debian release family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AptRoot {
    /// trixie + trixie-backports (6.12 and 7.x kernels, trixie's glibc for their kbuild tools).
    Trixie,
    /// bookworm + bookworm-updates + bookworm-security (6.1 kernels).
    Bookworm,
    /// sid (unstable: its newest 7.x kernel, sid's glibc for its kbuild tools).
    Sid,
}

impl AptRoot {
    fn name(self) -> &'static str {
        match self {
            AptRoot::Trixie => "trixie",
            AptRoot::Bookworm => "bookworm",
            AptRoot::Sid => "sid",
        }
    }

    fn sources(self) -> String {
        let mirror = debian_mirror();
        let security =
            std::env::var("TSM_VM_DEBIAN_SECURITY").unwrap_or_else(|_| DEBIAN_SECURITY.into());
        let (suites, sec) = match self {
            AptRoot::Trixie => ("trixie trixie-backports", None),
            AptRoot::Bookworm => ("bookworm bookworm-updates", Some("bookworm-security")),
            AptRoot::Sid => ("sid", None),
        };
        let mut s = format!(
            "Types: deb\nURIs: {mirror}\nSuites: {suites}\nComponents: main\nSigned-By: {KEYRING}\n"
        );
        if let Some(sec) = sec {
            s.push_str(&format!(
                "\nTypes: deb\nURIs: {security}\nSuites: {sec}\nComponents: main\nSigned-By: {KEYRING}\n"
            ));
        }
        s
    }

    fn dir(self) -> PathBuf {
        cache_dir().join("apt").join(self.name())
    }

    fn opts(self) -> Vec<String> {
        let d = self.dir();
        vec![
            "-oDir::Etc::SourceList=/dev/null".into(),
            format!("-oDir::Etc::SourceParts={}", d.join("sources").display()),
            format!("-oDir::State::Lists={}", d.join("lists").display()),
            format!("-oDir::Cache={}", d.join("cache").display()),
            "-oAPT::Architecture=amd64".into(),
            "-oAPT::Architectures=amd64".into(),
            "-oDebug::NoLocking=1".into(),
            "-oAPT::Sandbox::User=root".into(),
            "-qq".into(),
        ]
    }

    /// `apt-get update` into the private lists dir, unless lists are there already and
    /// `refresh` is false.
    fn ensure_lists(self, refresh: bool) -> Result<()> {
        let d = self.dir();
        let lists = d.join("lists");
        let have = fs::read_dir(&lists)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
            .unwrap_or(false);
        if have && !refresh {
            return Ok(());
        }
        fs::create_dir_all(d.join("sources"))?;
        fs::create_dir_all(lists.join("partial"))?;
        fs::create_dir_all(d.join("cache/archives/partial"))?;
        fs::write(d.join("sources/debian.sources"), self.sources())?;
        // Resolutions made from the old lists are stale now.
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("resolved-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        eprintln!("vm: apt-get update ({} suites, private lists)", self.name());
        let mut cmd = Command::new("apt-get");
        cmd.args(self.opts()).arg("update");
        run_cmd(&mut cmd)
    }

    fn cache_cmd(self, args: &[&str]) -> Command {
        let mut cmd = Command::new("apt-cache");
        cmd.args(self.opts()).args(args);
        cmd
    }

    /// `apt-cache show PKG` of a real (downloadable) package, or None.
    fn show(self, pkg: &str) -> Option<String> {
        let out = self
            .cache_cmd(&["show", "--no-all-versions", pkg])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains("\nFilename:")).then_some(text)
    }

    fn pkgnames(self, prefix: &str) -> Result<Vec<String>> {
        let out = run_cmd_output(&mut self.cache_cmd(&["pkgnames", prefix]))?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// `PKGS` and their whole dependency closure (Depends/Pre-Depends, no Recommends) from this
    /// root's release into `dir`, resolved against an empty dpkg status (so nothing the host has
    /// installed is assumed present) with `apt-get install --download-only`. Nothing is
    /// installed; the host's apt state is not touched.
    pub(crate) fn download_closure(self, pkgs: &[&str], dir: &Path) -> Result<()> {
        self.ensure_lists(false)?;
        let state = dir.join("apt-state");
        fs::create_dir_all(state.join("lists/partial"))?;
        fs::create_dir_all(dir.join("partial"))?;
        fs::write(state.join("status"), "")?;
        eprintln!(
            "vm: apt-get install --download-only {} (and dependencies, {} root)",
            pkgs.join(" "),
            self.name()
        );
        let mut cmd = Command::new("apt-get");
        cmd.args(self.opts())
            .arg(format!("-oDir::State={}", state.display()))
            .arg(format!(
                "-oDir::State::status={}",
                state.join("status").display()
            ))
            .arg(format!("-oDir::Cache::Archives={}", dir.display()))
            .args([
                "--no-install-recommends",
                "-y",
                "--download-only",
                "install",
            ])
            .args(pkgs);
        run_cmd(&mut cmd)
    }

    /// `apt-get download PKG...` into `dir`.
    fn download(self, pkgs: &[String], dir: &Path) -> Result<()> {
        fs::create_dir_all(dir)?;
        eprintln!("vm: apt-get download {}", pkgs.join(" "));
        let mut cmd = Command::new("apt-get");
        cmd.args(self.opts())
            .arg("download")
            .args(pkgs)
            .current_dir(dir);
        run_cmd(&mut cmd)
    }
}

/// Which kernel to test, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSpec {
    /// Newest 7.x kernel of trixie-backports (`trixie-backports`, `7`).
    TrixieBackports,
    /// Newest 7.x kernel of sid (`sid`, `unstable`).
    Sid,
    /// Newest 6.12 kernel of trixie itself (`trixie`, `6.12`).
    Trixie,
    /// Newest 6.1 kernel of bookworm (`bookworm`, `6.1`).
    Bookworm,
    /// An exact Debian kernel version, e.g. `7.3.4+deb13-amd64` or `6.1.0-56-amd64`.
    Exact(String),
}

impl KernelSpec {
    /// The default set, the matrix `cargo xtask vm-test` and `cargo xtask test` run: the newest
    /// 7.x of trixie-backports and of sid, trixie's 6.12 and bookworm's 6.1.
    pub fn defaults() -> Vec<KernelSpec> {
        vec![
            KernelSpec::TrixieBackports,
            KernelSpec::Sid,
            KernelSpec::Trixie,
            KernelSpec::Bookworm,
        ]
    }

    pub fn parse(s: &str) -> Result<KernelSpec> {
        let s = s.trim();
        Ok(match s {
            "trixie-backports" | "7" | "7.x" | "newest" => KernelSpec::TrixieBackports,
            "sid" | "unstable" => KernelSpec::Sid,
            "trixie" | "6.12" => KernelSpec::Trixie,
            "bookworm" | "6.1" => KernelSpec::Bookworm,
            v if v.ends_with("-amd64") && v.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
                KernelSpec::Exact(v.to_owned())
            }
            other => bail!(
                "unknown kernel {other:?}: use trixie-backports, sid, trixie, bookworm, or a version like 7.3.4+deb13-amd64"
            ),
        })
    }

    fn memo_name(&self) -> &str {
        match self {
            KernelSpec::TrixieBackports => "trixie-backports",
            KernelSpec::Sid => "sid",
            KernelSpec::Trixie => "trixie",
            KernelSpec::Bookworm => "bookworm",
            KernelSpec::Exact(v) => v,
        }
    }

    fn root(&self) -> AptRoot {
        match self {
            KernelSpec::TrixieBackports | KernelSpec::Trixie => AptRoot::Trixie,
            KernelSpec::Sid => AptRoot::Sid,
            KernelSpec::Bookworm => AptRoot::Bookworm,
            KernelSpec::Exact(v) if v.starts_with("6.1.") => AptRoot::Bookworm,
            // Debian's ABI suffix names the release: +deb13 is trixie(-backports); anything
            // newer is only in sid.
            KernelSpec::Exact(v) => match deb_release(v.trim_end_matches("-amd64")) {
                Some(n) if n > 13 => AptRoot::Sid,
                _ => AptRoot::Trixie,
            },
        }
    }

    /// Does `ver` (the part of `linux-headers-<ver>-amd64` before `-amd64`) belong to this spec?
    fn matches(&self, ver: &str) -> bool {
        let digits_dots =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.');
        match self {
            KernelSpec::TrixieBackports => ver
                .strip_suffix("+deb13")
                .is_some_and(|v| v.starts_with("7.") && digits_dots(v)),
            // sid's own builds carry the next release's suffix (+deb14, ...); whatever it is,
            // it is a plain upstream version before it.
            KernelSpec::Sid => {
                deb_release(ver).is_some()
                    && ver
                        .split_once("+deb")
                        .is_some_and(|(v, _)| v.starts_with("7.") && digits_dots(v))
            }
            KernelSpec::Trixie => ver
                .strip_suffix("+deb13")
                .is_some_and(|v| v.starts_with("6.12.") && digits_dots(v)),
            KernelSpec::Bookworm => ver
                .strip_prefix("6.1.0-")
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())),
            KernelSpec::Exact(v) => v.strip_suffix("-amd64") == Some(ver),
        }
    }
}

/// The Debian release number of a kernel ABI name's `+debNN` suffix (`7.3.4+deb13` → 13).
fn deb_release(ver: &str) -> Option<u32> {
    let (_, n) = ver.rsplit_once("+deb")?;
    (!n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// A fetched and prepared kernel (image + headers + built stand-in module).
#[derive(Clone, Debug)]
pub struct Kernel {
    /// Debian kernel release, e.g. `7.3.4+deb13-amd64` (= `uname -r` in the guest).
    pub version: String,
    /// `.vm-cache/kernels/<version>/`.
    pub dir: PathBuf,
    /// Where the packages are unpacked (`dir/root`).
    pub root: PathBuf,
    pub vmlinuz: PathBuf,
    /// `root/usr/src/linux-headers-<version>` (KDIR for out-of-tree modules).
    pub headers: PathBuf,
    /// `root/usr/lib/modules/<version>` or `root/lib/modules/<version>` (Debian's .ko files).
    pub modules: PathBuf,
    /// BTF-only vmlinux (the base BTF for module BTF), `headers/vmlinux`.
    pub vmlinux_btf: PathBuf,
    /// The stand-in module built for this kernel (set by `prepare`).
    pub standin_ko: PathBuf,
    /// The link TSM fixture (`tests/vm/linktsm/`), built by `prepare` only for kernels with
    /// `CONFIG_PCI_TSM` ([`Kernel::has_pci_tsm`]); absent otherwise.
    pub linktsm_ko: PathBuf,
    /// `tests/vm/latemod/`: loaded and unloaded while tracing (every kernel).
    pub latemod_ko: PathBuf,
}

impl Kernel {
    /// Is the upstream PCI TSM core built in? `CONFIG_PCI_TSM=y` in the headers' `.config`
    /// and its functions in the kernel's own BTF must agree ([`Kernel::pci_tsm_evidence`]).
    pub fn has_pci_tsm(&self) -> bool {
        self.pci_tsm_evidence().is_ok_and(|(config, _)| config)
    }

    /// `(config, btf)`: `CONFIG_PCI_TSM=y` in the headers' `.config`, and `pci_tsm_bind` named
    /// in the BTF vmlinux; an error when they disagree (a headers package that does not match
    /// its image, or a BTF without the function), naming both.
    pub fn pci_tsm_evidence(&self) -> Result<(bool, bool)> {
        let config = fs::read_to_string(self.headers.join(".config"))
            .map(|c| c.lines().any(|l| l == "CONFIG_PCI_TSM=y"))
            .unwrap_or(false);
        let btf = fs::read(&self.vmlinux_btf)
            .with_context(|| format!("reading {}", self.vmlinux_btf.display()))?;
        let in_btf = contains_name(&btf, b"pci_tsm_bind");
        if config != in_btf {
            bail!(
                "{}: CONFIG_PCI_TSM={} in the headers' .config but pci_tsm_bind {} its BTF ({})",
                self.version,
                if config { "y" } else { "n" },
                if in_btf { "is in" } else { "is not in" },
                self.vmlinux_btf.display()
            );
        }
        Ok((config, in_btf))
    }
}

impl Kernel {
    /// The `.ko` files (possibly `.ko.xz`/`.ko.zst`/`.ko.gz`) of Debian's modules `names` and
    /// everything they depend on (`modinfo -F depends`), dependencies first: the order to
    /// `insmod` them in. A name with no module file is taken to be built in and skipped.
    pub fn module_closure(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        walk_files(&self.modules.join("kernel"), &mut files);
        let by_name: std::collections::BTreeMap<String, PathBuf> = files
            .into_iter()
            .filter_map(|p| {
                let f = p.file_name()?.to_string_lossy().into_owned();
                let stem = f
                    .strip_suffix(".ko")
                    .or_else(|| f.strip_suffix(".ko.xz"))
                    .or_else(|| f.strip_suffix(".ko.zst"))
                    .or_else(|| f.strip_suffix(".ko.gz"))?;
                Some((stem.replace('-', "_"), p))
            })
            .collect();
        fn visit(
            name: &str,
            by_name: &std::collections::BTreeMap<String, PathBuf>,
            seen: &mut Vec<String>,
            out: &mut Vec<PathBuf>,
        ) -> Result<()> {
            let name = name.trim().replace('-', "_");
            if name.is_empty() || seen.contains(&name) {
                return Ok(());
            }
            seen.push(name.clone());
            let Some(path) = by_name.get(&name) else {
                return Ok(()); // built in
            };
            let deps = run_cmd_output(Command::new("modinfo").args(["-F", "depends"]).arg(path))?;
            for d in deps.trim().split(',') {
                visit(d, by_name, seen, out)?;
            }
            out.push(path.clone());
            Ok(())
        }
        let (mut seen, mut out) = (Vec::new(), Vec::new());
        for n in names {
            visit(n, &by_name, &mut seen, &mut out)?;
        }
        Ok(out)
    }
}

/// Is `name` a whole NUL-terminated string of a BTF string table (`\0name\0`)?
fn contains_name(btf: &[u8], name: &[u8]) -> bool {
    let mut pat = Vec::with_capacity(name.len() + 2);
    pat.push(0);
    pat.extend_from_slice(name);
    pat.push(0);
    btf.windows(pat.len()).any(|w| w == pat.as_slice())
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

/// Newest version (e.g. `7.3.4+deb13-amd64`) in the private lists matching `spec`.
fn resolve(spec: &KernelSpec, refresh: bool) -> Result<String> {
    if let KernelSpec::Exact(v) = spec {
        return Ok(v.clone());
    }
    let root = spec.root();
    root.ensure_lists(refresh)?;
    // apt-cache takes about a second per call: remember the answer until the lists change.
    let memo = root.dir().join(format!("resolved-{}", spec.memo_name()));
    if let Ok(v) = fs::read_to_string(&memo)
        && !v.trim().is_empty()
    {
        return Ok(v.trim().to_owned());
    }
    let mut candidates: Vec<String> = root
        .pkgnames("linux-headers-")?
        .into_iter()
        .filter_map(|p| {
            let v = p.strip_prefix("linux-headers-")?.strip_suffix("-amd64")?;
            spec.matches(v).then(|| v.to_owned())
        })
        .collect();
    candidates.sort_by_key(|v| std::cmp::Reverse(version_key(v)));
    for v in candidates {
        let full = format!("{v}-amd64");
        if root.show(&format!("linux-headers-{full}")).is_some()
            && image_package(root, &full).is_some()
        {
            fs::write(&memo, &full)?;
            return Ok(full);
        }
    }
    bail!(
        "no kernel matching {spec:?} in the {} apt lists",
        root.name()
    )
}

/// The package that carries `vmlinuz` for `ver`.
fn image_package(root: AptRoot, ver: &str) -> Option<String> {
    [
        format!("linux-binary-{ver}"),
        format!("linux-image-{ver}-unsigned"),
        format!("linux-image-{ver}"),
    ]
    .into_iter()
    .find(|p| {
        root.show(p).is_some_and(|s| {
            // linux-image-<ver> on 7.x is a small meta package without vmlinuz.
            !p.starts_with("linux-image-") || installed_size(&s).unwrap_or(0) > 10_000
        })
    })
}

fn installed_size(show: &str) -> Option<u64> {
    show.lines()
        .find_map(|l| l.strip_prefix("Installed-Size:"))
        .and_then(|s| s.trim().parse().ok())
}

/// Names in a `Depends:` line of `apt-cache show` output.
fn depends(show: &str) -> Vec<String> {
    show.lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .unwrap_or("")
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn kernel_paths(version: &str) -> Kernel {
    let dir = cache_dir().join("kernels").join(version);
    let root = dir.join("root");
    let headers = root
        .join("usr/src")
        .join(format!("linux-headers-{version}"));
    let modules = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|m| root.join(m).join(version))
        .find(|p| p.join("kernel").is_dir())
        .unwrap_or_else(|| root.join("usr/lib/modules").join(version));
    let vmlinuz = [
        root.join("boot").join(format!("vmlinuz-{version}")),
        root.join("usr/lib/modules").join(version).join("vmlinuz"),
        root.join("lib/modules").join(version).join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| root.join("boot").join(format!("vmlinuz-{version}")));
    Kernel {
        version: version.to_owned(),
        vmlinux_btf: headers.join("vmlinux"),
        standin_ko: dir.join("standin/tsm_standin.ko"),
        linktsm_ko: dir.join("linktsm/tsm_linktsm.ko"),
        latemod_ko: dir.join("latemod/tsm_latemod.ko"),
        dir,
        root,
        vmlinuz,
        headers,
        modules,
    }
}

/// Resolve `spec` and make sure the kernel is downloaded, unpacked and fixed up for building
/// out-of-tree modules. Does not build the stand-in module (see `fixtures::build`).
pub fn fetch(spec: &KernelSpec, refresh: bool) -> Result<Kernel> {
    // A pinned version that is already prepared needs no apt at all.
    if let KernelSpec::Exact(v) = spec {
        let k = kernel_paths(v);
        if is_ready(&k) {
            return Ok(k);
        }
    }
    let version = resolve(spec, refresh)?;
    let k = kernel_paths(&version);
    if is_ready(&k) {
        return Ok(k);
    }
    let root = spec.root();
    root.ensure_lists(refresh)?;
    if root.show(&format!("linux-headers-{version}")).is_none() {
        // Pinned version unknown to cached lists: refresh once.
        root.ensure_lists(true)?;
    }
    let headers_show = root
        .show(&format!("linux-headers-{version}"))
        .ok_or_else(|| {
            anyhow!(
                "linux-headers-{version} is not in the {} suites",
                root.name()
            )
        })?;
    let mut pkgs = vec![format!("linux-headers-{version}")];
    pkgs.extend(depends(&headers_show).into_iter().filter(|d| {
        d.starts_with("linux-kbuild-")
            || (d.starts_with("linux-headers-") && d.ends_with("-common"))
    }));
    pkgs.push(
        image_package(root, &version)
            .ok_or_else(|| anyhow!("no kernel image package for {version}"))?,
    );
    let modules_pkg = format!("linux-modules-{version}");
    if root.show(&modules_pkg).is_some() {
        pkgs.push(modules_pkg);
    }

    let _ = fs::remove_dir_all(&k.dir);
    let debs = k.dir.join("debs");
    root.download(&pkgs, &debs)?;
    fs::create_dir_all(&k.root)?;
    for e in fs::read_dir(&debs)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            run_cmd(Command::new("dpkg").arg("-x").arg(&p).arg(&k.root))?;
        }
    }
    let k = kernel_paths(&version);
    fixup(&k, root)?;
    fs::remove_dir_all(&debs)?;
    fs::write(k.dir.join("ready"), k.root.display().to_string())?;
    Ok(k)
}

fn is_ready(k: &Kernel) -> bool {
    fs::read_to_string(k.dir.join("ready")).is_ok_and(|s| s == k.root.display().to_string())
        && k.vmlinuz.is_file()
        && k.vmlinux_btf.is_file()
}

/// Make the unpacked headers usable from where they are: rewrite `/usr/src` paths, run
/// host tools that need a newer glibc through the loader of the kernel's own release, and
/// provide a BTF vmlinux.
fn fixup(k: &Kernel, root: AptRoot) -> Result<()> {
    if !k.vmlinuz.is_file() {
        bail!("no vmlinuz in the {} packages", k.version);
    }
    let usr_src = k.root.join("usr/src");
    for e in fs::read_dir(&usr_src)? {
        let mk = e?.path().join("Makefile");
        if let Ok(text) = fs::read_to_string(&mk) {
            // Only the small wrapper Makefiles point at /usr/src.
            if text.len() < 4096 && text.contains("/usr/src/") {
                let fixed = text.replace("/usr/src/", &format!("{}/", usr_src.display()));
                fs::write(&mk, fixed)?;
            }
        }
    }
    wrap_new_glibc_tools(k, root)?;
    if !k.vmlinux_btf.is_file() {
        extract_btf_vmlinux(&k.vmlinuz, &k.vmlinux_btf)
            .with_context(|| format!("extracting a BTF vmlinux from {}", k.vmlinuz.display()))?;
    }
    Ok(())
}

fn host_glibc_minor() -> u32 {
    let out = Command::new("getconf").arg("GNU_LIBC_VERSION").output();
    out.ok()
        .and_then(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.trim().rsplit('.').next().and_then(|m| m.parse().ok())
        })
        .unwrap_or(36)
}

/// Highest `GLIBC_2.N` an ELF binary references (0 for none / not an ELF).
fn needed_glibc_minor(bytes: &[u8]) -> u32 {
    if !bytes.starts_with(b"\x7fELF") {
        return 0;
    }
    let pat = b"GLIBC_2.";
    let mut max = 0;
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(pat.len()).position(|w| w == pat) {
        let start = i + pos + pat.len();
        let n: String = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        max = max.max(n.parse().unwrap_or(0));
        i = start;
    }
    max
}

fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk_files(&e.path(), out);
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
}

/// Kbuild tools of trixie's and sid's kernels (modpost.real-*, objtool.real-*, resolve_btfids)
/// need glibc 2.38 or newer; bookworm has 2.36. Replace each such binary by a shell wrapper that
/// runs it through the loader of the release the kernel comes from (`root`).
fn wrap_new_glibc_tools(k: &Kernel, root: AptRoot) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let host = host_glibc_minor();
    let mut files = Vec::new();
    walk_files(&k.root.join("usr/lib"), &mut files);
    let mut to_wrap = Vec::new();
    for f in files {
        let Ok(meta) = fs::metadata(&f) else { continue };
        if meta.permissions().mode() & 0o111 == 0 || f.to_string_lossy().contains("/modules/") {
            continue;
        }
        let bytes = fs::read(&f)?;
        if needed_glibc_minor(&bytes) > host {
            to_wrap.push(f);
        }
    }
    if to_wrap.is_empty() {
        return Ok(());
    }
    let libc = release_glibc(root)?;
    let loader = libc.join("ld-linux-x86-64.so.2");
    for f in to_wrap {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let real = f.with_file_name(format!(".{name}.newglibc"));
        fs::rename(&f, &real)?;
        let script = format!(
            "#!/bin/sh\n# Runs {name} (needs a newer glibc than the host's) through {}'s loader.\nexec {} --library-path {}:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu \"$(dirname \"$0\")/.{name}.newglibc\" \"$@\"\n",
            root.name(),
            loader.display(),
            libc.display()
        );
        fs::write(&f, script)?;
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// The libc6 of `root`'s release unpacked under `.vm-cache/glibc/` (trixie; bookworm has the
/// host's) or `.vm-cache/glibc-<release>/`; returns its library dir.
fn release_glibc(root: AptRoot) -> Result<PathBuf> {
    let dir = match root {
        AptRoot::Trixie | AptRoot::Bookworm => cache_dir().join("glibc"),
        other => cache_dir().join(format!("glibc-{}", other.name())),
    };
    let root = match root {
        AptRoot::Bookworm => AptRoot::Trixie,
        other => other,
    };
    let find = |dir: &Path| {
        ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
            .iter()
            .map(|l| dir.join("root").join(l))
            .find(|l| l.join("ld-linux-x86-64.so.2").exists())
    };
    if let Some(l) = find(&dir) {
        return Ok(l);
    }
    root.ensure_lists(false)?;
    let _ = fs::remove_dir_all(&dir);
    let debs = dir.join("debs");
    root.download(&["libc6".to_owned()], &debs)?;
    for e in fs::read_dir(&debs)? {
        let p = e?.path();
        run_cmd(Command::new("dpkg").arg("-x").arg(&p).arg(dir.join("root")))?;
    }
    find(&dir).ok_or_else(|| anyhow!("trixie libc6 has no ld-linux-x86-64.so.2"))
}

/// Decompress the kernel inside a bzImage (like scripts/extract-vmlinux) and keep only the
/// `.BTF`/`.BTF_ids` sections: enough as `--btf_base` for module BTF.
fn extract_btf_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    use std::io::Write;
    let data = fs::read(vmlinuz)?;
    let formats: [(&[u8], &str, &[&str]); 4] = [
        (b"\xfd7zXZ\x00", "xz", &["-dc"]),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dc"]),
        (b"\x1f\x8b\x08", "gzip", &["-dc"]),
        (b"\x5d\x00\x00\x00", "xz", &["--format=lzma", "-dc"]),
    ];
    let tmp = out.with_extension("full");
    for (magic, tool, args) in formats {
        let mut start = 0;
        while let Some(pos) = data[start..].windows(magic.len()).position(|w| w == magic) {
            let off = start + pos;
            start = off + 1;
            let mut child = Command::new(tool)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("running {tool}"))?;
            let mut stdin = child.stdin.take().unwrap();
            let payload = data[off..].to_vec();
            let writer = std::thread::spawn(move || {
                let _ = stdin.write_all(&payload);
            });
            let o = child.wait_with_output()?;
            let _ = writer.join();
            if o.stdout.starts_with(b"\x7fELF") {
                fs::write(&tmp, &o.stdout)?;
                let r = run_cmd(
                    Command::new("objcopy")
                        .args(["--only-section=.BTF", "--only-section=.BTF_ids"])
                        .arg(&tmp)
                        .arg(out)
                        .stderr(std::process::Stdio::null()),
                );
                let _ = fs::remove_file(&tmp);
                return r;
            }
        }
    }
    bail!(
        "could not find a compressed ELF kernel in {}",
        vmlinuz.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_matching() {
        assert!(KernelSpec::TrixieBackports.matches("7.3.4+deb13"));
        assert!(!KernelSpec::TrixieBackports.matches("6.12.57+deb13"));
        assert!(KernelSpec::Trixie.matches("6.12.57+deb13"));
        assert!(!KernelSpec::Trixie.matches("6.16.12+deb13"));
        assert!(!KernelSpec::Trixie.matches("7.3.4+deb13"));
        assert!(KernelSpec::Sid.matches("7.2.13+deb14"));
        assert!(!KernelSpec::Sid.matches("6.17.8+deb14"));
        assert!(!KernelSpec::Sid.matches("7.2.13+deb14-rt"));
        assert_eq!(KernelSpec::parse("sid").unwrap(), KernelSpec::Sid);
        assert_eq!(KernelSpec::parse("trixie").unwrap(), KernelSpec::Trixie);
        assert_eq!(
            KernelSpec::Exact("7.2.13+deb14-amd64".into()).root(),
            AptRoot::Sid
        );
        assert_eq!(
            KernelSpec::Exact("6.12.57+deb13-amd64".into()).root(),
            AptRoot::Trixie
        );
        assert!(!KernelSpec::TrixieBackports.matches("7.3.4+deb13-cloud"));
        assert!(KernelSpec::Bookworm.matches("6.1.0-56"));
        assert!(!KernelSpec::Bookworm.matches("6.12.117+deb12"));
        assert!(KernelSpec::Exact("7.3.4+deb13-amd64".into()).matches("7.3.4+deb13"));
        assert_eq!(
            KernelSpec::parse("7.3.4+deb13-amd64").unwrap(),
            KernelSpec::Exact("7.3.4+deb13-amd64".into())
        );
        assert!(KernelSpec::parse("foo").is_err());
    }

    #[test]
    fn btf_names_are_whole_strings() {
        assert!(contains_name(b"\0a\0pci_tsm_bind\0b\0", b"pci_tsm_bind"));
        assert!(!contains_name(b"\0standin_pci_tsm_bind\0", b"pci_tsm_bind"));
        assert!(!contains_name(b"\0pci_tsm_bind_x\0", b"pci_tsm_bind"));
    }

    #[test]
    fn version_order() {
        let mut v = ["7.2.12+deb13", "7.3.4+deb13", "7.10.1+deb13"];
        v.sort_by_key(|v| std::cmp::Reverse(version_key(v)));
        assert_eq!(v[0], "7.10.1+deb13");
    }

    #[test]
    fn depends_parsing() {
        let show = "Package: x\nDepends: gcc-14-for-host, linux-headers-7.3.4+deb13-common (= 7.3.4-1), linux-kbuild-7.3.4+deb13\n";
        let d = depends(show);
        assert!(d.contains(&"linux-kbuild-7.3.4+deb13".to_owned()));
        assert!(d.contains(&"linux-headers-7.3.4+deb13-common".to_owned()));
    }

    #[test]
    fn glibc_scan() {
        let mut b = b"\x7fELF....GLIBC_2.34\0GLIBC_2.38\0".to_vec();
        assert_eq!(needed_glibc_minor(&b), 38);
        b[0] = 0;
        assert_eq!(needed_glibc_minor(&b), 0);
    }
}
