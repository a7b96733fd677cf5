//! The deployments as shipped, in a VM (`cargo xtask shipped-test`; a step of `cargo xtask
//! test`): the Debian package under systemd as PID 1, and the DaemonSet's exact privileges.
//!
//! The guest is the Debian 12 root of [`super::install`] (minbase + systemd 252) booted as
//! the initramfs (one cpio of the root, cached, and one of this run's files concatenated) on
//! the newest 7.x test kernel with the PCI TSM core, q35 TEE endpoints and the fixtures.
//! `/init` is systemd; `systemd.wants=tsm-shipped.service` on the command line starts the
//! scenario (`tests/vm/scenarios/shipped.sh`) once the system is up. See the script for what
//! it does; checked here:
//!
//! - **systemd**: `dpkg -i` starts the unit (its postinst), which attaches, serves
//!   `/metrics` and tracks a bind made by a VMM of another user (root; the daemon is its
//!   dynamic user); after `systemctl restart` the binding is still there and nothing is
//!   leaked; the unbind closes it; `systemctl stop` + `dpkg -P` leave nothing of ours (unit,
//!   files, pins, runtime directory). `systemd-analyze security` is reported.
//! - **DaemonSet**: uid, capabilities, `allowPrivilegeEscalation`, read-only mounts and
//!   args come from `deploy/kubernetes/daemonset.yaml` ([`DaemonSetRun::from_manifest`]),
//!   never copied here: a capability dropped from the manifest that the daemon needs fails
//!   this test. A bind, a pod restart (SIGTERM, start again): the binding is kept, the state
//!   saved without a warning, no leak.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::install::bookworm_root;
use crate::util::{root, run};
use crate::vm::cache::cache_dir;
use crate::vm::checks::{Checks, parse_exposition};
use crate::vm::initramfs::find_busybox;
use crate::vm::suites::restart::sum;
use crate::vm::{KernelSpec, RunOptions, VmOutput, prepare, run_in_vm_with};

pub const SCRIPT: &str = "tests/vm/scenarios/shipped.sh";
const MANIFEST: &str = "deploy/kubernetes/daemonset.yaml";
/// The fixtures' first TEE endpoint (`A` in `tests/vm/scenarios/lib.sh`).
const DEVICE: &str = "0000:00:04.0";

/// The test unit that runs the scenario once the system is up, then powers off; its output
/// protocol is the test VM's (`tests/vm/init`): sections on ttyS1, `RUN_RC`, `TSM-VM DONE`.
const TEST_UNIT: &str = "[Unit]
Description=tsm-trace deployment test
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh /opt/tsm-test/run-test.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
";

const RUN_TEST: &str = r#"#!/bin/sh
export TSM_VM_OUT=/dev/ttyS1 PATH=/usr/sbin:/usr/bin:/sbin:/bin
sh /scenarios/run.sh
echo "=== RUN_RC $? ===" >> /dev/ttyS1
{ echo "=== BEGIN dmesg ==="; /opt/tsm-test/busybox dmesg; echo "=== END dmesg rc=0 ==="; } >> /dev/ttyS1
echo "=== TSM-VM DONE ===" >> /dev/ttyS1
systemctl poweroff --force --force
"#;

/// How the DaemonSet runs the daemon, from the manifest.
#[derive(Debug, PartialEq, Eq)]
pub struct DaemonSetRun {
    pub uid: u64,
    pub gid: u64,
    /// `capabilities.add`, lower case (setpriv's names: `bpf`, `perfmon`, …).
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub read_only_root: bool,
    /// Mount paths of read-only volume mounts.
    pub read_only: Vec<String>,
    /// hostPath volumes of type DirectoryOrCreate (the kubelet makes them, root, 0755).
    pub make_dirs: Vec<String>,
    pub args: Vec<String>,
}

impl DaemonSetRun {
    /// Reads the first container of the DaemonSet in `text` (the manifest's documents).
    pub fn from_manifest(text: &str) -> Result<DaemonSetRun> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text)
            .map_err(|e| anyhow::anyhow!("{MANIFEST}: YAML: {e}"))?;
        let ds = docs
            .iter()
            .find(|d| d["kind"] == "DaemonSet")
            .with_context(|| format!("{MANIFEST}: no DaemonSet"))?;
        let pod = &ds["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        let strings = |v: &Value, what: &str| -> Result<Vec<String>> {
            v.as_array()
                .with_context(|| format!("{MANIFEST}: {what} is not a list"))?
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .with_context(|| format!("{MANIFEST}: {what}: {s} is not a string"))
                })
                .collect()
        };
        let drop = strings(&sc["capabilities"]["drop"], "capabilities.drop")?;
        if drop != ["ALL"] {
            bail!("{MANIFEST}: capabilities.drop is {drop:?}; this test models [\"ALL\"] only");
        }
        if sc["privileged"].as_bool() == Some(true) {
            bail!("{MANIFEST}: a privileged container is not what this test models");
        }
        let caps = strings(&sc["capabilities"]["add"], "capabilities.add")?
            .into_iter()
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let uid = sc["runAsUser"].as_u64().unwrap_or(0);
        let gid = sc["runAsGroup"].as_u64().unwrap_or(0);
        let volumes: BTreeMap<&str, &Value> = pod["volumes"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|v| Some((v["name"].as_str()?, v)))
                    .collect()
            })
            .unwrap_or_default();
        let mut read_only = Vec::new();
        let mut make_dirs = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let path = m["mountPath"]
                .as_str()
                .with_context(|| format!("{MANIFEST}: a volumeMount without mountPath"))?;
            let name = m["name"].as_str().unwrap_or_default();
            let host = volumes
                .get(name)
                .and_then(|v| v["hostPath"]["path"].as_str())
                .with_context(|| format!("{MANIFEST}: volume {name:?} is not a hostPath"))?;
            if host != path {
                bail!(
                    "{MANIFEST}: {name} mounts host {host} at {path}; this test models hostPath = mountPath"
                );
            }
            if m["readOnly"].as_bool() == Some(true) {
                read_only.push(path.to_owned());
            }
            if volumes[name]["hostPath"]["type"] == "DirectoryOrCreate" {
                make_dirs.push(path.to_owned());
            }
        }
        Ok(DaemonSetRun {
            uid,
            gid,
            caps,
            no_new_privs: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
            read_only_root: sc["readOnlyRootFilesystem"].as_bool() == Some(true),
            read_only,
            make_dirs,
            args: strings(&c["args"], "args")?,
        })
    }

    /// `daemonset.env` for the guest script (shell assignments; no value holds a quote).
    fn env(&self) -> Result<String> {
        let all = [&self.caps, &self.read_only, &self.make_dirs, &self.args];
        if all
            .iter()
            .flat_map(|v| v.iter())
            .any(|s| s.contains(['\'', '"', '\\', '$', '`', ' ', '\n']))
        {
            bail!(
                "{MANIFEST}: a value with quotes, spaces or `$`: this test passes them to a shell unquoted"
            );
        }
        let caps: Vec<String> = self.caps.iter().map(|c| format!("+{c}")).collect();
        Ok(format!(
            "DS_UID={}\nDS_GID={}\nDS_CAPS='{}'\nDS_NNP={}\nDS_ROFS={}\nDS_RO='{}'\nDS_MKDIR='{}'\nDS_ARGS='{}'\n",
            self.uid,
            self.gid,
            caps.join(","),
            u8::from(self.no_new_privs),
            u8::from(self.read_only_root),
            self.read_only.join(" "),
            self.make_dirs.join(" "),
            self.args.join(" "),
        ))
    }
}

/// The root as one cpio (cached beside its tarball): systemd as `/init`, gettys masked.
fn root_cpio() -> Result<PathBuf> {
    let tar = bookworm_root()?;
    let cpio = tar.with_extension("cpio");
    if cpio.is_file() && cpio.metadata()?.modified()? >= tar.metadata()?.modified()? {
        return Ok(cpio);
    }
    let dir = tar.with_extension("cpio-build");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    run(Command::new("tar").arg("-C").arg(&dir).arg("-xf").arg(&tar))?;
    std::os::unix::fs::symlink("lib/systemd/systemd", dir.join("init"))?;
    for unit in ["serial-getty@ttyS0.service", "getty@tty1.service"] {
        let p = dir.join("etc/systemd/system").join(unit);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink("/dev/null", p)?;
    }
    let part = cpio.with_extension("cpio.part");
    cpio_of(&dir, &part)?;
    std::fs::rename(&part, &cpio)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(cpio)
}

/// `dir`'s tree as a newc cpio in `out` (owners and modes as they are).
fn cpio_of(dir: &Path, out: &Path) -> Result<()> {
    let f = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let st = Command::new("sh")
        .arg("-c")
        .arg("find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet")
        .current_dir(dir)
        .stdout(f)
        .status()
        .context("running find | cpio")?;
    if !st.success() {
        bail!("cpio of {} failed ({st})", dir.display());
    }
    Ok(())
}

/// This run's initramfs: the root's cpio, then one of the test's own files.
fn initrd(
    kernel: &crate::vm::kernel::Kernel,
    deb: &Path,
    ds: &DaemonSetRun,
    dir: &Path,
) -> Result<PathBuf> {
    let o = dir.join("overlay");
    let put = |path: &str, data: &[u8], mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = o.join(path);
        std::fs::create_dir_all(p.parent().expect("a file in a directory"))?;
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    put("opt/tsm-test/tsm-trace.deb", &read(deb)?, 0o644)?;
    put("opt/tsm-test/busybox", &read(&find_busybox()?)?, 0o755)?;
    put(
        "opt/tsm-test/tsm_standin.ko",
        &read(&kernel.standin_ko)?,
        0o644,
    )?;
    put(
        "opt/tsm-test/tsm_linktsm.ko",
        &read(&kernel.linktsm_ko)?,
        0o644,
    )?;
    put("opt/tsm-test/daemonset.env", ds.env()?.as_bytes(), 0o644)?;
    put("opt/tsm-test/run-test.sh", RUN_TEST.as_bytes(), 0o755)?;
    put(
        "etc/systemd/system/tsm-shipped.service",
        TEST_UNIT.as_bytes(),
        0o644,
    )?;
    put("scenarios/run.sh", &read(&root().join(SCRIPT))?, 0o755)?;
    put(
        "scenarios/lib.sh",
        &read(&root().join("tests/vm/scenarios/lib.sh"))?,
        0o644,
    )?;
    let overlay = dir.join("overlay.cpio");
    cpio_of(&o, &overlay)?;
    let out = dir.join("initramfs.cpio");
    let mut w = std::fs::File::create(&out)?;
    for part in [root_cpio()?, overlay.clone()] {
        std::io::copy(&mut std::fs::File::open(&part)?, &mut w)?;
    }
    std::fs::remove_dir_all(&o)?;
    std::fs::remove_file(&overlay)?;
    Ok(out)
}

/// Boots the guest with `deb` installed by its scenario and checks what it printed.
pub fn test(deb: &Path) -> Result<()> {
    let ds = DaemonSetRun::from_manifest(
        &std::fs::read_to_string(root().join(MANIFEST)).context(MANIFEST)?,
    )?;
    let kernel = prepare(&[KernelSpec::parse("trixie-backports")?])?.remove(0);
    if !kernel.linktsm_ko.is_file() {
        bail!(
            "{}: no tsm_linktsm fixture (a kernel without CONFIG_PCI_TSM?): the test needs the PCI TSM core",
            kernel.version
        );
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let dir = cache_dir()
        .join("runs")
        .join(format!("{stamp}-shipped-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let opts = RunOptions {
        timeout: Duration::from_secs(600),
        memory_mb: 2048,
        tee_pcie: true,
        initrd: Some(initrd(&kernel, deb, &ds, &dir)?),
        extra_cmdline: "systemd.wants=tsm-shipped.service systemd.show_status=false".into(),
        ..RunOptions::default()
    };
    let out = run_in_vm_with(&kernel, &[], "", &opts)?;
    let n = check(&out)?;
    println!(
        "shipped: {n} checks passed on {} (systemd unit, DaemonSet privileges); logs in {}",
        out.kernel_version,
        out.run_dir.display()
    );
    Ok(())
}

/// The `--user UID:GID` of the DaemonSet's args as the guest echoed them (`ds_env`).
fn ds_user(env: &str) -> Option<(Option<String>, Option<String>)> {
    let args = env.lines().find_map(|l| l.strip_prefix("DS_ARGS="))?;
    let mut it = args.trim_matches('\'').split_whitespace();
    it.find(|a| *a == "--user")?;
    let (u, g) = it.next()?.split_once(':')?;
    Some((Some(u.to_owned()), Some(g.to_owned())))
}

fn check(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    let text = |name: &str| {
        out.sections
            .get(name)
            .map(|s| s.text.as_str())
            .unwrap_or("")
    };
    let truth = text("truth");
    let fact = |key: &str| {
        truth
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or("")
            .to_owned()
    };
    for key in [
        "sd_ready1",
        "bind",
        "sd_ready2",
        "unbind",
        "ds_ready1",
        "ds_bind",
        "ds_exit1",
        "ds_ready2",
        "ds_exit2",
    ] {
        let f = fact(key);
        c.check(f.contains(" rc=0"), || {
            format!("{key}: want rc=0, the guest recorded {f:?} (truth:\n{truth})")
        });
    }
    c.check(text("sd_install").contains("exit=0"), || {
        format!("dpkg -i failed:\n{}", text("sd_install"))
    });
    let journal = match text("sd_journal") {
        "" => text("sd_journal_start"),
        j => j,
    };
    let status1 = text("sd_status1");
    c.check(
        status1.contains("ActiveState=active") && status1.contains("NRestarts=0"),
        || format!("the unit is not running as installed (started once):\n{status1}\n--- journal ---\n{journal}"),
    );
    let uid = status1
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    c.check(uid != "0" && uid != "?", || {
        format!("the daemon's effective uid is {uid}: the unit must never run it as root")
    });
    for (n, active) in [
        ("sd_metrics1", 1.0),
        ("sd_metrics2", 1.0),
        ("sd_metrics3", 0.0),
        ("ds_metrics1", 1.0),
        ("ds_metrics2", 1.0),
    ] {
        let m = parse_exposition(text(n));
        c.check(sum(&m, "tsm_trace_probe_attached", &[]) >= 1.0, || {
            format!("{n}: no probe attached:\n{}", text(n))
        });
        c.eq(
            sum(&m, "tsm_trace_bindings_active", &[]),
            active,
            &format!("{n}: tsm_trace_bindings_active"),
        );
        c.eq(
            sum(&m, "tsm_trace_bindings_leaked", &[]),
            0.0,
            &format!("{n}: tsm_trace_bindings_leaked (no false leak)"),
        );
        c.eq(
            sum(&m, "tsm_trace_leaked_binding_info", &[]),
            0.0,
            &format!("{n}: tsm_trace_leaked_binding_info series"),
        );
    }
    let m = parse_exposition(text("sd_metrics3"));
    c.check(
        sum(
            &m,
            "tsm_trace_operations_total",
            &["op=\"unbind\"", "result=\"ok\""],
        ) >= 1.0,
        || "sd_metrics3: the unbind is not counted".into(),
    );
    // The binding as the fixture made it: device, the VMM (root's shell, another user than
    // the daemon's) and its VM, decoded by the daemon as each deployment runs it.
    for (n, bind) in [
        ("sd_bindings1", "bind"),
        ("sd_bindings2", "bind"),
        ("ds_bindings2", "ds_bind"),
    ] {
        let kv = crate::vm::parse_kv(&fact(bind));
        let want = (
            Some(DEVICE.to_string()),
            kv.get("pid").and_then(|p| p.parse::<u64>().ok()),
            kv.get("stats_id").cloned(),
        );
        let v: Value = serde_json::from_str(text(n)).unwrap_or(Value::Null);
        let got = v["bindings"].as_array().and_then(|b| b.first()).map(|b| {
            (
                b["device"].as_str().map(str::to_owned),
                b["vmm_tgid"].as_u64(),
                b["vm"]["stats_id"].as_str().map(str::to_owned),
            )
        });
        c.check(want.1.is_some() && got.as_ref() == Some(&want), || {
            format!(
                "{n}: want one binding (device, VMM pid, VM stats_id) = {want:?} as the fixture recorded, got {got:?}:\n{}",
                text(n)
            )
        });
    }
    for n in ["ds_err1", "ds_err2"] {
        let err = text(n);
        c.check(
            !err.contains("Permission denied")
                && !err.contains("could not hand")
                && !err.contains("will not be saved"),
            || format!("{n}: the DaemonSet's privileges lose the state:\n{err}"),
        );
    }
    // The pod's daemon became the manifest's --user once attached (unshare and setpriv
    // exec it in place: the pid the script started is the daemon's).
    let user = ds_user(text("ds_env"));
    for n in ["ds_status1", "ds_status2"] {
        let st = text(n);
        let id = |key: &str| {
            st.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(str::to_owned)
        };
        c.check(
            user.is_some() && Some((id("Uid:"), id("Gid:"))) == user,
            || {
                format!(
                    "{n}: the DaemonSet's daemon runs as {:?}, its --user is {user:?}:\n{st}",
                    (id("Uid:"), id("Gid:"))
                )
            },
        );
    }
    let purge = text("sd_purge");
    for want in ["stop=0", "purge=0", "unit=not-found", "run=0", "private=0"] {
        c.check(purge.lines().any(|l| l == want), || {
            format!("stop + purge: want {want}:\n{purge}")
        });
    }
    for key in ["pins=", "files="] {
        let line = purge.lines().find(|l| l.starts_with(key)).unwrap_or("?");
        c.check(line != "?" && !line.contains("tsm-trace"), || {
            format!("stop + purge left something: {line}")
        });
    }
    let cleanup = text("ds_cleanup");
    let left = cleanup
        .lines()
        .find(|l| l.starts_with("left="))
        .unwrap_or("?");
    c.check(left != "?" && !left.contains("tsm-trace"), || {
        format!("DaemonSet run: `tsm-trace unpin` left pins ({left}):\n{cleanup}")
    });
    let security = text("sd_security");
    let exposure = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for tsm-trace.service: ")
                .nth(1)
        })
        .unwrap_or("?");
    c.check(exposure != "?", || {
        format!("systemd-analyze security printed no exposure:\n{security}")
    });
    println!("shipped: systemd-analyze security (systemd 252, the unit as it ran): {exposure}");
    c.finish("shipped", out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemonset_run_comes_from_the_manifest() {
        let text = std::fs::read_to_string(root().join(MANIFEST)).unwrap();
        let ds = DaemonSetRun::from_manifest(&text).unwrap();
        assert!(ds.caps.contains(&"bpf".to_string()), "{ds:?}");
        assert!(ds.args.first().is_some_and(|a| a == "run"), "{ds:?}");
        assert!(ds.env().unwrap().contains("DS_CAPS='+"));
        assert_eq!(
            ds_user(&ds.env().unwrap()),
            Some((Some("65534".into()), Some("65534".into())))
        );
        let bad = text.replace("drop: [\"ALL\"]", "drop: [\"NET_RAW\"]");
        assert!(DaemonSetRun::from_manifest(&bad).is_err());
    }
}
