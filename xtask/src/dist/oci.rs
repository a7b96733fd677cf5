//! The container image as an OCI image layout (`target/dist/oci/`), written without a
//! container engine.
//!
//! The binary is static, so the image is one layer holding `/tsm-trace` (the stripped binary
//! the Debian package ships, byte for byte), a config and a manifest: `oci-layout`,
//! `index.json` (the manifest tagged with the crate version, as
//! `deploy/kubernetes/daemonset.yaml` pins it) and `blobs/sha256/`. Reproducible: the layer is
//! an uncompressed tar written here (sorted, one entry, owner 0:0, mtime and `created` from
//! the last commit), JSON with sorted keys, so one commit gives the same digests wherever it
//! is built. The config starts `/tsm-trace` with the DaemonSet's args as `Cmd`, as root with
//! only the DaemonSet's capabilities (`--user 65534:65534` drops to nobody once attached; the
//! binary is mode 0755, so any user can run it), and carries the `org.opencontainers.image.*`
//! labels.
//!
//! [`verify`] reads a layout back (digests and sizes of every blob, the layer's binary against
//! the package's, entrypoint, user, `Cmd` and labels) and has skopeo — an independent OCI
//! implementation — inspect it; [`run_rootfs`] unpacks the layer with GNU tar and runs
//! `tsm-trace doctor` from it (`cargo xtask dist --test`). `Containerfile` stays the recipe for
//! a machine with an engine; it builds the same binary the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Where `cargo xtask dist` writes the layout.
pub fn dir(root: &Path) -> PathBuf {
    root.join("target/dist/oci")
}

/// The binary's path in the image (the DaemonSet runs the image's entrypoint).
pub const ENTRYPOINT: &str = "/tsm-trace";
/// Root, with only the capabilities the DaemonSet adds (as `Containerfile` says).
pub const USER: &str = "0:0";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What goes into the image besides the binary.
#[derive(Clone, Debug)]
pub struct Meta {
    /// The tag (the crate version).
    pub tag: String,
    /// The DaemonSet's container args.
    pub cmd: Vec<String>,
    /// `org.opencontainers.image.*` labels.
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 time of the last commit (`created`).
    pub created: String,
    /// The same time in seconds since the epoch (the layer's mtime).
    pub epoch: u64,
}

/// The layout written.
pub struct Image {
    pub dir: PathBuf,
    pub tag: String,
    pub layer_bytes: u64,
}

/// One regular file of an uncompressed ustar archive.
fn tar_entry(out: &mut Vec<u8>, name: &str, mode: u32, mtime: u64, data: &[u8]) -> Result<()> {
    if name.len() >= 100 {
        bail!("tar: name {name:?} too long for a ustar header");
    }
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
    let octal = |n: u64, width: usize| format!("{n:0w$o}\0", w = width - 1);
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, octal(mode.into(), 8).as_bytes());
    put(&mut h, 108, octal(0, 8).as_bytes());
    put(&mut h, 116, octal(0, 8).as_bytes());
    put(&mut h, 124, octal(data.len() as u64, 12).as_bytes());
    put(&mut h, 136, octal(mtime, 12).as_bytes());
    put(&mut h, 148, b"        ");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\x0000");
    put(&mut h, 265, b"root");
    put(&mut h, 297, b"root");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    Ok(())
}

/// The layer: `tsm-trace` (0755, root) and the end-of-archive blocks.
pub fn layer(binary: &[u8], mtime: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(binary.len() + 2048);
    tar_entry(
        &mut out,
        ENTRYPOINT.trim_start_matches('/'),
        0o755,
        mtime,
        binary,
    )?;
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// A regular file of a ustar archive: (name, mode, uid, gid, data).
pub type TarFile = (String, u32, u64, u64, Vec<u8>);

/// Reads the regular files of an uncompressed tar (what [`layer`] writes; other entry types
/// are an error, as the image has none).
pub fn read_tar(mut b: &[u8]) -> Result<Vec<TarFile>> {
    let field = |h: &[u8], at: usize, len: usize| -> Result<u64> {
        let s = std::str::from_utf8(&h[at..at + len])?;
        let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
        u64::from_str_radix(s, 8).with_context(|| format!("tar: octal field {s:?}"))
    };
    let mut out = Vec::new();
    while b.len() >= 512 {
        let (h, rest) = b.split_at(512);
        if h.iter().all(|&x| x == 0) {
            return Ok(out);
        }
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        if h[156] != b'0' && h[156] != 0 {
            bail!(
                "tar: {name}: entry type {:?}, not a regular file",
                h[156] as char
            );
        }
        let size = field(h, 124, 12)? as usize;
        if rest.len() < size {
            bail!("tar: {name}: truncated");
        }
        out.push((
            name,
            field(h, 100, 8)? as u32,
            field(h, 108, 8)?,
            field(h, 116, 8)?,
            rest[..size].to_vec(),
        ));
        b = &rest[size.div_ceil(512) * 512..];
    }
    bail!("tar: no end-of-archive blocks")
}

/// `sha256:<hex>` of `data` (coreutils' sha256sum: no hashing crate to vet).
pub fn digest(data: &[u8]) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running sha256sum (coreutils)")?;
    child
        .stdin
        .take()
        .context("sha256sum stdin")?
        .write_all(data)?;
    let out = child.wait_with_output()?;
    let hex = String::from_utf8_lossy(&out.stdout);
    let hex = hex.split_whitespace().next().unwrap_or("");
    if !out.status.success() || hex.len() != 64 {
        bail!("sha256sum failed: {hex:?}");
    }
    Ok(format!("sha256:{hex}"))
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
        .with_context(|| format!("not a sha256 digest: {digest:?}"))?;
    Ok(dir.join("blobs/sha256").join(hex))
}

/// Writes `data` as a blob; returns its descriptor.
fn put_blob(dir: &Path, media_type: &str, data: &[u8]) -> Result<Value> {
    let d = digest(data)?;
    std::fs::write(blob_path(dir, &d)?, data)?;
    Ok(json!({"mediaType": media_type, "digest": d, "size": data.len()}))
}

/// JSON as stored: compact, keys sorted (serde_json's map is a BTreeMap here).
fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON values serialize")
}

/// Writes the layout into `dir` (replacing what was there).
pub fn write(binary: &[u8], dir: &Path, meta: &Meta) -> Result<Image> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    let layer = layer(binary, meta.epoch)?;
    let layer_desc = put_blob(dir, LAYER_TYPE, &layer)?;
    let config = json!({
        "created": meta.created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": USER,
            "Entrypoint": [ENTRYPOINT],
            "Cmd": meta.cmd,
            "WorkingDir": "/",
            "ExposedPorts": {"9477/tcp": {}},
            "Labels": meta.labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{
            "created": meta.created,
            "created_by": "cargo xtask dist (xtask/src/dist/oci.rs)",
        }],
    });
    let config_desc = put_blob(dir, CONFIG_TYPE, &bytes(&config))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config_desc,
        "layers": [layer_desc],
        "annotations": meta.labels,
    });
    let mut manifest_desc = put_blob(dir, MANIFEST_TYPE, &bytes(&manifest))?;
    manifest_desc["platform"] = json!({"architecture": "amd64", "os": "linux"});
    manifest_desc["annotations"] = json!({ REF_NAME: meta.tag });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [manifest_desc],
    });
    std::fs::write(dir.join("index.json"), bytes(&index))?;
    std::fs::write(
        dir.join("oci-layout"),
        bytes(&json!({"imageLayoutVersion": "1.0.0"})),
    )?;
    Ok(Image {
        dir: dir.to_path_buf(),
        tag: meta.tag.clone(),
        layer_bytes: layer.len() as u64,
    })
}

/// Reads the blob `desc` names and checks its digest and size against the descriptor.
fn get_blob(dir: &Path, desc: &Value, want_type: &str) -> Result<Vec<u8>> {
    let d = desc["digest"]
        .as_str()
        .context("descriptor without digest")?;
    if desc["mediaType"] != want_type {
        bail!("{d}: media type {}, want {want_type}", desc["mediaType"]);
    }
    let p = blob_path(dir, d)?;
    let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    let got = digest(&data)?;
    if got != d {
        bail!(
            "{}: content has digest {got}, its name says {d}",
            p.display()
        );
    }
    if desc["size"].as_u64() != Some(data.len() as u64) {
        bail!(
            "{d}: {} bytes, descriptor says {}",
            data.len(),
            desc["size"]
        );
    }
    Ok(data)
}

/// Checks the layout in `dir` against `binary` (the package's) and `meta`; returns the
/// manifest's digest.
pub fn verify(dir: &Path, binary: &[u8], meta: &Meta) -> Result<String> {
    let layout: Value = serde_json::from_slice(&std::fs::read(dir.join("oci-layout"))?)?;
    if layout["imageLayoutVersion"] != "1.0.0" {
        bail!("oci-layout: {layout}");
    }
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let mans = index["manifests"]
        .as_array()
        .context("index.json: no manifests")?;
    let [m] = mans.as_slice() else {
        bail!("index.json: {} manifests, want 1", mans.len());
    };
    if m["annotations"][REF_NAME] != meta.tag.as_str() {
        bail!(
            "index.json: tag {}, want {:?}",
            m["annotations"][REF_NAME],
            meta.tag
        );
    }
    let manifest: Value = serde_json::from_slice(&get_blob(dir, m, MANIFEST_TYPE)?)?;
    let config: Value = serde_json::from_slice(&get_blob(dir, &manifest["config"], CONFIG_TYPE)?)?;
    let layers = manifest["layers"]
        .as_array()
        .context("manifest: no layers")?;
    let [l] = layers.as_slice() else {
        bail!("manifest: {} layers, want 1", layers.len());
    };
    let files = read_tar(&get_blob(dir, l, LAYER_TYPE)?)?;
    let want = ENTRYPOINT.trim_start_matches('/');
    match files.as_slice() {
        [(name, mode, 0, 0, data)] if name == want && *mode == 0o755 => {
            if data != binary {
                bail!(
                    "the layer's {name} ({} bytes) differs from the package's binary ({} bytes)",
                    data.len(),
                    binary.len()
                );
            }
        }
        _ => bail!(
            "the layer holds {:?}, want only {want} (0755, root)",
            files
                .iter()
                .map(|f| (&f.0, format!("{:o}", f.1), f.2, f.3))
                .collect::<Vec<_>>()
        ),
    }
    let c = &config["config"];
    let checks = [
        (c["Entrypoint"] == json!([ENTRYPOINT]), "Entrypoint"),
        (c["User"] == USER, "User"),
        (c["Cmd"] == json!(meta.cmd), "Cmd (the DaemonSet's args)"),
        (c["Labels"] == json!(meta.labels), "Labels"),
        (
            config["rootfs"]["diff_ids"] == json!([l["digest"]]),
            "rootfs.diff_ids",
        ),
        (
            config["architecture"] == "amd64" && config["os"] == "linux",
            "platform",
        ),
    ];
    for (ok, what) in checks {
        if !ok {
            bail!("image config: {what} is wrong: {config}");
        }
    }
    Ok(m["digest"].as_str().unwrap_or("").into())
}

/// skopeo (Debian's; `cargo xtask setup` installs it) inspects the layout: an independent
/// reader must see the same manifest digest, platform and labels.
pub fn skopeo_inspect(dir: &Path, meta: &Meta, manifest_digest: &str) -> Result<()> {
    let out = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:{}", dir.display(), meta.tag))
        .output()
        .context("running skopeo (cargo xtask setup installs it: apt-get install skopeo)")?;
    if !out.status.success() {
        bail!(
            "skopeo inspect rejected {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("skopeo inspect: not JSON")?;
    if v["Digest"] != manifest_digest
        || v["Architecture"] != "amd64"
        || v["Os"] != "linux"
        || v["Labels"] != json!(meta.labels)
        || v["Layers"].as_array().map(Vec::len) != Some(1)
    {
        bail!("skopeo inspect sees a different image (want digest {manifest_digest}): {v}");
    }
    Ok(())
}

/// Runs `args` chrooted into `root` with only PATH set (the image's config sets no
/// environment; PATH finds `chroot` itself): exit code, stdout, stderr.
fn chroot(root: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    crate::util::chroot(root, args, &[])
}

/// Unpacks the image's layer with GNU tar into `root` and runs `tsm-trace --version` and
/// `tsm-trace doctor --json` chrooted there (the image has nothing else: no shell, no libc).
pub fn run_rootfs(dir: &Path, root: &Path) -> Result<String> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let manifest: Value =
        serde_json::from_slice(&get_blob(dir, &index["manifests"][0], MANIFEST_TYPE)?)?;
    let layer = blob_path(
        dir,
        manifest["layers"][0]["digest"]
            .as_str()
            .context("manifest: no layer")?,
    )?;
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }
    std::fs::create_dir_all(root)?;
    crate::util::run(
        Command::new("tar")
            .arg("-C")
            .arg(root)
            .arg("-xf")
            .arg(&layer),
    )?;
    let (rc, version, err) = chroot(root, &[ENTRYPOINT, "--version"])?;
    if rc != 0 || !version.starts_with("tsm-trace ") {
        bail!("{ENTRYPOINT} --version in the image's root exited {rc}: {version:?} {err:?}");
    }
    let (rc, out, err) = chroot(root, &[ENTRYPOINT, "doctor", "--json"])?;
    let report: Option<Value> = serde_json::from_str(out.trim()).ok();
    let code = report.as_ref().and_then(|r| r["exit_code"].as_i64());
    if !((0..=2).contains(&rc) && code == Some(i64::from(rc))) {
        bail!("doctor in the image's root exited {rc} with {out:?} {err:?}");
    }
    std::fs::remove_dir_all(root)?;
    Ok(format!(
        "{} doctor says {} (exit {rc})",
        version.trim(),
        report
            .as_ref()
            .map_or("?".into(), |r| r["verdict"].to_string())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            tag: "0.1.0".into(),
            cmd: vec!["run".into(), "--user".into(), "65534:65534".into()],
            labels: BTreeMap::from([("org.opencontainers.image.version".into(), "0.1.0".into())]),
            created: "2026-12-02T11:00:00+00:00".into(),
            epoch: 1_796_209_200,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-oci-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn containerfile_agrees_with_the_image_and_the_daemonset() {
        let root = crate::util::root();
        let (_, args) = crate::dist::manifests::daemonset_image_and_args(&root).unwrap();
        let text = std::fs::read_to_string(root.join("Containerfile")).unwrap();
        let line = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_else(|| panic!("Containerfile: no {k}"))
                .trim()
                .to_string()
        };
        assert_eq!(line("USER "), USER);
        let json_line = |k: &str| serde_json::from_str::<Value>(&line(k)).unwrap();
        assert_eq!(json_line("ENTRYPOINT "), json!([ENTRYPOINT]));
        assert_eq!(
            json_line("CMD "),
            json!(args),
            "Containerfile CMD vs the DaemonSet's args"
        );
    }

    #[test]
    fn tar_round_trips_and_gnu_tar_reads_it() {
        let data: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        let t = layer(&data, 1234).unwrap();
        assert_eq!(t.len() % 512, 0);
        let files = read_tar(&t).unwrap();
        assert_eq!(files, vec![("tsm-trace".into(), 0o755, 0, 0, data.clone())]);
        let d = tmp("tar");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("l.tar"), &t).unwrap();
        let out = Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvf"])
            .arg(d.join("l.tar"))
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(listing.starts_with("-rwxr-xr-x 0/0"), "{listing}");
        assert!(
            listing.contains(" 1500 1970-01-01 00:20:34 tsm-trace"),
            "{listing}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn written_layouts_verify_are_reproducible_and_mutations_fail() {
        let bin = b"\x7fELF not really".to_vec();
        let (a, b) = (tmp("a"), tmp("b"));
        write(&bin, &a, &meta()).unwrap();
        write(&bin, &b, &meta()).unwrap();
        let da = verify(&a, &bin, &meta()).unwrap();
        assert_eq!(da, verify(&b, &bin, &meta()).unwrap(), "not reproducible");
        assert!(da.starts_with("sha256:"));
        // A different binary, Cmd or tag is seen.
        assert!(verify(&a, b"other", &meta()).is_err());
        let mut m = meta();
        m.cmd.pop();
        assert!(verify(&a, &bin, &m).is_err());
        let mut m = meta();
        m.tag = "latest".into();
        assert!(verify(&a, &bin, &m).is_err());
        // A blob whose content no longer matches its name.
        let index: Value =
            serde_json::from_slice(&std::fs::read(a.join("index.json")).unwrap()).unwrap();
        let p = blob_path(&a, index["manifests"][0]["digest"].as_str().unwrap()).unwrap();
        let mut text = std::fs::read(&p).unwrap();
        text.push(b' ');
        std::fs::write(&p, text).unwrap();
        assert!(verify(&a, &bin, &meta()).is_err());
        for d in [a, b] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
