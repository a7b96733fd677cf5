//! Kubernetes manifests checked without kubectl or a cluster: `deploy/kubernetes/*.yaml`.
//!
//! Why typed serde structs and not a schema tool: kubeconform and friends fetch their schemas
//! from the network at run time (or need a vendored copy of thousands of them), and a schema
//! only says each document is well-formed on its own. The structs below model the fields
//! these manifests use, with `deny_unknown_fields` at every level, so a misspelt or misplaced
//! key fails as it would in the API server; and the checks then cross the documents as no
//! schema can: selectors match the pod labels, every port name referenced exists, the image
//! is `tsm-trace:<crate version>` (never `latest`), and the PrometheusRule holds exactly the
//! groups of `dashboards/alerts.yml` and `dashboards/recording.yml`.
//!
//! Fields that are parsed only for their shape (so an unknown key beside them fails) are
//! not read afterwards: hence the `dead_code` allowance on the structs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

type Labels = BTreeMap<String, String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Meta {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DaemonSet {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: DaemonSetSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DaemonSetSpec {
    selector: Selector,
    template: PodTemplate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    match_labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodTemplate {
    metadata: PodMeta,
    spec: PodSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodMeta {
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    node_selector: Labels,
    /// The host's pid namespace: in-flight calls of exited threads are found in /proc.
    #[serde(rename = "hostPID", default)]
    host_pid: bool,
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Container {
    name: String,
    image: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    ports: Vec<ContainerPort>,
    readiness_probe: Option<Probe>,
    liveness_probe: Option<Probe>,
    resources: Option<Resources>,
    security_context: Option<SecurityContext>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ContainerPort {
    name: String,
    container_port: u16,
    /// Parsed so that one is refused with a reason, not as an unknown key.
    host_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Probe {
    http_get: HttpGet,
    period_seconds: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpGet {
    path: String,
    port: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resources {
    #[serde(default)]
    requests: BTreeMap<String, String>,
    #[serde(default)]
    limits: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecurityContext {
    privileged: Option<bool>,
    run_as_user: Option<u32>,
    read_only_root_filesystem: Option<bool>,
    allow_privilege_escalation: Option<bool>,
    capabilities: Option<Capabilities>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Capabilities {
    #[serde(default)]
    drop: Vec<String>,
    #[serde(default)]
    add: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VolumeMount {
    name: String,
    mount_path: String,
    read_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Volume {
    name: String,
    host_path: HostPath,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostPath {
    path: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Service {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: ServiceSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    selector: Labels,
    ports: Vec<ServicePort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServicePort {
    name: String,
    port: u16,
    target_port: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: ServiceMonitorSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: Selector,
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Endpoint {
    port: String,
    interval: Option<String>,
    #[serde(default)]
    relabelings: Vec<Relabeling>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Relabeling {
    #[serde(default)]
    source_labels: Vec<String>,
    target_label: String,
    replacement: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrometheusRule {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: RuleSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    groups: Vec<Value>,
}

/// Every document of the manifests, parsed.
#[derive(Default)]
struct Docs {
    daemonsets: Vec<DaemonSet>,
    services: Vec<Service>,
    monitors: Vec<ServiceMonitor>,
    rules: Vec<PrometheusRule>,
}

fn typed<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v).with_context(|| format!("{what}: not a valid manifest"))
}

fn parse(file: &str, text: &str, docs: &mut Docs) -> Result<()> {
    let values: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| anyhow::anyhow!("{file}: YAML: {e}"))?;
    for (i, v) in values.into_iter().enumerate() {
        if v.is_null() {
            continue;
        }
        let api = v["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = v["kind"].as_str().unwrap_or("").to_string();
        let what = format!("{file} document {} ({api} {kind})", i + 1);
        match (api.as_str(), kind.as_str()) {
            ("apps/v1", "DaemonSet") => docs.daemonsets.push(typed(v, &what)?),
            ("v1", "Service") => docs.services.push(typed(v, &what)?),
            ("monitoring.coreos.com/v1", "ServiceMonitor") => docs.monitors.push(typed(v, &what)?),
            ("monitoring.coreos.com/v1", "PrometheusRule") => docs.rules.push(typed(v, &what)?),
            _ => bail!("{what}: unknown apiVersion/kind"),
        }
    }
    Ok(())
}

fn subset(a: &Labels, b: &Labels) -> bool {
    a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// The runbook's way to a pod: `kubectl -n NS get pod -l SELECTOR …` and
/// `kubectl -n NS port-forward $POD LOCAL:REMOTE`, as (namespace, selector, remote port).
fn runbook_port_forward(runbook: &str) -> Result<(String, Labels, u16)> {
    let after = |words: &[&str], flag: &str| -> Option<String> {
        let i = words.iter().position(|w| *w == flag)?;
        words.get(i + 1).map(|w| w.to_string())
    };
    let line = |needle: &str| {
        runbook
            .lines()
            .find(|l| l.trim_start().starts_with("kubectl") && l.contains(needle))
            .or_else(|| {
                runbook
                    .lines()
                    .find(|l| l.contains("$(kubectl") && l.contains(needle))
            })
            .with_context(|| format!("docs/runbook.md: no `kubectl … {needle}` command"))
    };
    let get: Vec<&str> = line("get pod")?
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .collect();
    let fwd: Vec<&str> = line("port-forward")?.split_whitespace().collect();
    let ns = after(&get, "-n").context("docs/runbook.md: `kubectl get pod` without -n")?;
    let fwd_ns = after(&fwd, "-n").context("docs/runbook.md: port-forward without -n")?;
    if fwd_ns != ns {
        bail!("docs/runbook.md: get pod in {ns:?}, port-forward in {fwd_ns:?}");
    }
    let mut sel = Labels::new();
    for kv in after(&get, "-l")
        .context("docs/runbook.md: `kubectl get pod` without -l")?
        .split(',')
    {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("docs/runbook.md: selector {kv:?}"))?;
        sel.insert(k.into(), v.into());
    }
    let ports = fwd
        .iter()
        .find_map(|w| w.split_once(':').filter(|(a, _)| a.parse::<u16>().is_ok()))
        .context("docs/runbook.md: port-forward without LOCAL:REMOTE")?;
    let remote = ports
        .1
        .parse()
        .with_context(|| format!("docs/runbook.md: port {:?}", ports.1))?;
    Ok((ns, sel, remote))
}

/// The port of `--listen ADDR:PORT` in the container's args (9477 if absent, the default).
fn listen_port(args: &[String]) -> Option<u16> {
    match args.iter().position(|a| a == "--listen") {
        Some(i) => args.get(i + 1)?.rsplit_once(':')?.1.parse().ok(),
        None => Some(9477),
    }
}

/// Checks `files` (name, text) against each other, the crate `version`, the rule files'
/// groups and the runbook's way to a pod; returns the number of documents.
fn check_texts(
    files: &[(String, String)],
    version: &str,
    rule_groups: &[Value],
    runbook: &str,
) -> Result<usize> {
    let mut d = Docs::default();
    for (name, text) in files {
        parse(name, text, &mut d)?;
    }
    let mut errs: Vec<String> = Vec::new();
    let n = d.daemonsets.len() + d.services.len() + d.monitors.len() + d.rules.len();
    if d.daemonsets.len() != 1
        || d.services.len() != 1
        || d.monitors.len() != 1
        || d.rules.len() != 1
    {
        bail!(
            "expected one DaemonSet, Service, ServiceMonitor and PrometheusRule; found {}, {}, {}, {}",
            d.daemonsets.len(),
            d.services.len(),
            d.monitors.len(),
            d.rules.len()
        );
    }
    let (ds, svc, sm, pr) = (
        &d.daemonsets[0],
        &d.services[0],
        &d.monitors[0],
        &d.rules[0],
    );
    let pod = &ds.spec.template;
    if !subset(&ds.spec.selector.match_labels, &pod.metadata.labels) {
        errs.push(
            "DaemonSet: spec.selector.matchLabels does not match the pod template's labels".into(),
        );
    }
    if !pod.spec.host_pid {
        errs.push("DaemonSet: hostPID must be true (tsm-trace looks kernel thread ids up in /proc to expire calls of exited threads)".into());
    }
    let bpffs = pod
        .spec
        .volumes
        .iter()
        .find(|v| v.host_path.path == "/sys/fs/bpf")
        .map(|v| v.name.as_str());
    let bpffs_rw = pod.spec.containers.iter().any(|c| {
        c.volume_mounts.iter().any(|m| {
            Some(m.name.as_str()) == bpffs
                && m.mount_path == "/sys/fs/bpf"
                && m.read_only != Some(true)
        })
    });
    if !bpffs_rw {
        errs.push("DaemonSet: the host's /sys/fs/bpf must be mounted writable at /sys/fs/bpf (probes and state stay pinned across pod restarts)".into());
    }
    let want_image = format!("tsm-trace:{version}");
    let mut port_names = Vec::new();
    for c in &pod.spec.containers {
        if c.image != want_image {
            errs.push(format!(
                "DaemonSet container {}: image {:?}, want {want_image:?} (the crate version)",
                c.name, c.image
            ));
        }
        port_names.extend(c.ports.iter().map(|p| p.name.clone()));
        for p in [&c.readiness_probe, &c.liveness_probe]
            .into_iter()
            .flatten()
        {
            if let Some(name) = p.http_get.port.as_str()
                && !c.ports.iter().any(|x| x.name == name)
            {
                errs.push(format!(
                    "container {}: probe port {name:?} is not a container port",
                    c.name
                ));
            }
        }
        for m in &c.volume_mounts {
            if !pod.spec.volumes.iter().any(|v| v.name == m.name) {
                errs.push(format!(
                    "container {}: volumeMount {:?} names no volume",
                    c.name, m.name
                ));
            }
        }
        let drops_all = c
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .is_some_and(|k| k.drop.iter().any(|x| x == "ALL"));
        if !drops_all {
            errs.push(format!(
                "container {}: securityContext.capabilities.drop lacks ALL",
                c.name
            ));
        }
        if c.args.first().map(String::as_str) != Some("run") {
            errs.push(format!(
                "container {}: args must start with `run`: {:?}",
                c.name, c.args
            ));
        }
    }
    // Operators reach a pod's /metrics, /bindings and /readyz through the runbook's
    // `kubectl port-forward`: it must name the namespace, the pod labels and the port the
    // daemon listens on; a hostPort (the node's port open to all) is refused.
    match runbook_port_forward(runbook) {
        Err(e) => errs.push(format!("{e:#}")),
        Ok((ns, sel, remote)) => {
            if Some(&ns) != ds.metadata.namespace.as_ref() {
                errs.push(format!(
                    "docs/runbook.md: port-forward in namespace {ns:?}, the DaemonSet is in {:?}",
                    ds.metadata.namespace
                ));
            }
            if sel.is_empty() || !subset(&sel, &pod.metadata.labels) {
                errs.push(format!(
                    "docs/runbook.md: selector {sel:?} does not select the DaemonSet's pods"
                ));
            }
            for c in &pod.spec.containers {
                if !c.ports.iter().any(|p| p.container_port == remote) {
                    errs.push(format!(
                        "docs/runbook.md: port-forward to {remote}, not a port of container {}",
                        c.name
                    ));
                }
            }
        }
    }
    for c in &pod.spec.containers {
        let listen = listen_port(&c.args);
        for p in &c.ports {
            if Some(p.container_port) != listen {
                errs.push(format!(
                    "container {}: port {} is not the --listen port {listen:?}",
                    c.name, p.container_port
                ));
            }
            if let Some(h) = p.host_port {
                errs.push(format!(
                    "container {}: hostPort {h} opens the unauthenticated endpoints to everything that reaches the node; the runbook's `kubectl port-forward` is the way in",
                    c.name
                ));
            }
        }
    }
    if !subset(&svc.spec.selector, &pod.metadata.labels) {
        errs.push("Service: spec.selector does not select the DaemonSet's pods".into());
    }
    for p in &svc.spec.ports {
        if let Some(t) = p.target_port.as_str()
            && !port_names.iter().any(|n| n == t)
        {
            errs.push(format!(
                "Service port {}: targetPort {t:?} is not a container port",
                p.name
            ));
        }
    }
    if !subset(&sm.spec.selector.match_labels, &svc.metadata.labels) {
        errs.push("ServiceMonitor: spec.selector does not select the Service".into());
    }
    for e in &sm.spec.endpoints {
        if !svc.spec.ports.iter().any(|p| p.name == e.port) {
            errs.push(format!(
                "ServiceMonitor endpoint port {:?} is not a Service port",
                e.port
            ));
        }
    }
    if pr.spec.groups != rule_groups {
        errs.push("PrometheusRule: spec.groups differ from the groups of dashboards/alerts.yml + dashboards/recording.yml (change the rules there, then copy them)".into());
    }
    let ns: Vec<&Option<String>> = [&ds.metadata, &svc.metadata, &sm.metadata, &pr.metadata]
        .iter()
        .map(|m| &m.namespace)
        .collect();
    if ns.iter().any(|n| *n != ns[0]) {
        errs.push(format!("documents in different namespaces: {ns:?}"));
    }
    if !errs.is_empty() {
        bail!(
            "{} manifest checks failed:\n  {}",
            errs.len(),
            errs.join("\n  ")
        );
    }
    Ok(n)
}

fn rule_groups(root: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for f in ["dashboards/alerts.yml", "dashboards/recording.yml"] {
        let text = std::fs::read_to_string(root.join(f)).with_context(|| format!("reading {f}"))?;
        let v: Value =
            serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{f}: YAML: {e}"))?;
        out.extend(
            v["groups"]
                .as_array()
                .cloned()
                .with_context(|| format!("{f}: no groups"))?,
        );
    }
    Ok(out)
}

/// The image and args of the DaemonSet's one container: the OCI image `cargo xtask dist`
/// writes is tagged and started (`Cmd`) as the DaemonSet runs it.
pub fn daemonset_image_and_args(root: &Path) -> Result<(String, Vec<String>)> {
    let f = "deploy/kubernetes/daemonset.yaml";
    let text = std::fs::read_to_string(root.join(f)).with_context(|| format!("reading {f}"))?;
    let mut d = Docs::default();
    parse(f, &text, &mut d)?;
    match d.daemonsets.as_slice() {
        [ds] => match ds.spec.template.spec.containers.as_slice() {
            [c] => Ok((c.image.clone(), c.args.clone())),
            cs => bail!("{f}: expected one container, found {}", cs.len()),
        },
        ds => bail!("{f}: expected one DaemonSet, found {}", ds.len()),
    }
}

/// `cargo xtask test`'s step: every manifest in `deploy/kubernetes/`.
pub fn check() -> Result<()> {
    let root = crate::util::root();
    let dir = root.join("deploy/kubernetes");
    let mut files = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    for p in names
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        files.push((
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            text,
        ));
    }
    let runbook =
        std::fs::read_to_string(root.join("docs/runbook.md")).context("reading docs/runbook.md")?;
    let n = check_texts(
        &files,
        env!("CARGO_PKG_VERSION"),
        &rule_groups(&root)?,
        &runbook,
    )?;
    println!(
        "manifests: {n} documents in {} valid and consistent",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runbook() -> String {
        std::fs::read_to_string(crate::util::root().join("docs/runbook.md")).unwrap()
    }

    fn repo() -> (Vec<(String, String)>, Vec<Value>) {
        let root = crate::util::root();
        let files = ["daemonset.yaml", "prometheusrule.yaml"]
            .iter()
            .map(|f| {
                let t = std::fs::read_to_string(root.join("deploy/kubernetes").join(f)).unwrap();
                (f.to_string(), t)
            })
            .collect();
        (files, rule_groups(&root).unwrap())
    }

    #[test]
    fn the_repository_manifests_pass() {
        let (files, groups) = repo();
        assert_eq!(
            check_texts(&files, env!("CARGO_PKG_VERSION"), &groups, &runbook()).unwrap(),
            4
        );
    }

    /// Each mutation must be caught (the check can fail).
    #[test]
    fn mutations_fail() {
        let (files, groups) = repo();
        let version = env!("CARGO_PKG_VERSION");
        let cases: &[(&str, &str, &str)] = &[
            (
                &format!("image: tsm-trace:{version}"),
                "image: tsm-trace:latest",
                "image",
            ),
            (
                "readOnlyRootFilesystem: true",
                "readOnlyRootFileSystem: true",
                "not a valid manifest",
            ),
            (
                "selector: {app.kubernetes.io/name: tsm-trace}",
                "selector: {app: other}",
                "does not select",
            ),
            ("- port: metrics", "- port: http", "not a Service port"),
            (
                "kind: ServiceMonitor",
                "kind: ServiceMonitr",
                "unknown apiVersion/kind",
            ),
            ("drop: [\"ALL\"]", "drop: []", "lacks ALL"),
            (
                "containerPort: 9477}",
                "containerPort: 9477, hostPort: 9477}",
                "hostPort 9477",
            ),
            (
                "\"0.0.0.0:9477\"",
                "\"0.0.0.0:9478\"",
                "not the --listen port",
            ),
            (
                "namespace: monitoring\n  labels: {app.kubernetes.io/name: tsm-trace}\nspec:\n  selector:",
                "namespace: kube-system\n  labels: {app.kubernetes.io/name: tsm-trace}\nspec:\n  selector:",
                "port-forward in namespace",
            ),
        ];
        for (from, to, want) in cases {
            let mut f = files.clone();
            assert!(f[0].1.contains(from), "{from:?} not in the DaemonSet file");
            f[0].1 = f[0].1.replacen(from, to, 1);
            let e = format!(
                "{:#}",
                check_texts(&f, version, &groups, &runbook()).unwrap_err()
            );
            assert!(e.contains(want), "{to:?}: {e}");
        }
        let mut g = groups.clone();
        g.pop();
        let e = check_texts(&files, version, &g, &runbook())
            .unwrap_err()
            .to_string();
        assert!(e.contains("PrometheusRule"), "{e}");
        // The runbook's way to a pod: a wrong port, a wrong label, no command at all.
        for (from, to, want) in [
            (
                "port-forward $POD 9477:9477",
                "port-forward $POD 9477:8080",
                "not a port",
            ),
            (
                "-l app.kubernetes.io/name=tsm-trace",
                "-l app=tsm-trace",
                "does not select",
            ),
            (
                "kubectl -n monitoring port-forward $POD",
                "kubectl -n monitoring proxy $POD",
                "no `kubectl … port-forward`",
            ),
        ] {
            let r = runbook();
            assert!(r.contains(from), "{from:?} not in the runbook");
            let e = format!(
                "{:#}",
                check_texts(&files, version, &groups, &r.replace(from, to)).unwrap_err()
            );
            assert!(e.contains(want), "{to:?}: {e}");
        }
    }
}
