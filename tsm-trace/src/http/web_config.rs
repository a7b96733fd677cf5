//! `--web.config.file`: TLS and basic auth, in the format of the Prometheus exporter-toolkit
//! (<https://prometheus.io/docs/prometheus/latest/configuration/https/>), so scrape configs
//! written for node_exporter and friends work unchanged:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt            # relative paths are relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
//!   client_ca_file: ca.crt
//!   min_version: TLS12               # TLS12 (default) or TLS13
//! http_server_config:
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! basic_auth_users:
//!   prometheus: $2y$10$...           # bcrypt (htpasswd -nBC 10 prometheus)
//! ```
//!
//! Keys tsm-trace does not implement (`cipher_suites`, `curve_preferences`,
//! `client_allowed_sans`, `max_version`, inline `cert`/`key`) are refused with a clear error
//! rather than silently ignored: a security setting that is not applied must not look as if
//! it were. The file is read once, at startup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::auth::{AuthError, BasicAuth};
use crate::files::{cap, read_capped, read_to_string_capped};

/// Why a web config cannot be used. Each message names the file or the key; the library's
/// error (I/O, PEM, rustls, header syntax, bcrypt) is its source.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("reading --web.config.file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// What is wrong inside the file ([`WebConfig::load`]).
    #[error("--web.config.file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: Box<WebConfigError>,
    },
    /// `line N (key.path): what is wrong`: the YAML parser's message, rewritten to name the
    /// key and no Rust type (so the parser's error is not kept as a source: its text is what
    /// this one replaces).
    #[error("{0}")]
    Syntax(String),
    /// A key or value tsm-trace refuses; the message names the key.
    #[error("{0}")]
    Refused(String),
    #[error("http_server_config.headers: {name:?} is not a header name")]
    HeaderName {
        name: String,
        #[source]
        source: axum::http::header::InvalidHeaderName,
    },
    #[error("http_server_config.headers.{name}: not a header value")]
    HeaderValue {
        name: String,
        #[source]
        source: axum::http::header::InvalidHeaderValue,
    },
    /// Reading a file the config names (`key` is its key: `tls_server_config.cert_file`).
    #[error("{key} {path}")]
    KeyFile {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} {path}: not PEM")]
    Pem {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{key} {path}: no PEM certificate")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("tls_server_config.key_file {path}: no PEM private key")]
    NoKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("tls_server_config.client_ca_file {path}: a certificate is not a usable CA")]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("tls_server_config.client_ca_file: no client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls refused the settings (`what`: which).
    #[error("tls_server_config: {what}")]
    Tls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error(transparent)]
    BasicAuth(#[from] AuthError),
}

fn refused(msg: impl Into<String>) -> WebConfigError {
    WebConfigError::Refused(msg.into())
}

/// What the server applies: built from the file by [`WebConfig::load`]; the default is plain
/// HTTP without auth.
#[derive(Clone, Default)]
pub struct WebConfig {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub basic_auth: Option<Arc<BasicAuth>>,
    /// Added to every response (`http_server_config.headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("basic_auth", &self.basic_auth.is_some())
            .field("headers", &self.headers)
            .finish()
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsServerConfig>,
    http_server_config: Option<HttpServerConfig>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    // Known to the exporter-toolkit, not implemented here: refused if set.
    cert: Option<serde::de::IgnoredAny>,
    key: Option<serde::de::IgnoredAny>,
    client_ca: Option<serde::de::IgnoredAny>,
    max_version: Option<serde::de::IgnoredAny>,
    cipher_suites: Option<serde::de::IgnoredAny>,
    curve_preferences: Option<serde::de::IgnoredAny>,
    client_allowed_sans: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpServerConfig {
    /// HTTP/2 is not served (HTTP/1.1 only); accepted so that shared files load.
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// The YAML parser's error as one line: `line N (key.path): what is wrong`, without its
/// source snippet and without its hints for Rust callers (`set DuplicateKeyPolicy ...`).
fn yaml_error(text: &str, raw: &str) -> String {
    let first = raw.lines().next().unwrap_or(raw).trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // `line 2 column 10: invalid boolean`
    let (line, msg) = match first.split_once(": ") {
        Some((at, msg)) if at.starts_with("line ") => (
            at.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<usize>().ok()),
            msg,
        ),
        _ => (None, first),
    };
    let msg = msg.split(", set ").next().unwrap_or(msg);
    let msg = match msg {
        "expected mapping start" => "expected a mapping (key: value lines)".to_string(),
        "expected string scalar" => {
            "expected a single value (a string), not a list or mapping".to_string()
        }
        "invalid boolean" => "expected true or false".to_string(),
        m => match m.strip_prefix("duplicate mapping key: ") {
            Some(k) => format!("{k} is set twice"),
            None => m.to_string(),
        },
    };
    let Some(n) = line else {
        return format!("not a valid web config: {msg}");
    };
    match key_path(text, n) {
        Some(path) => format!("line {n} ({path}): {msg}"),
        None => format!(
            "line {n}: {msg} (the file is a mapping of tls_server_config, http_server_config, basic_auth_users)"
        ),
    }
}

/// The dotted key of line `n` (1-based) of a block-style YAML mapping: its own key and the
/// keys of the less indented lines above it (`tls_server_config.cert_file`).
fn key_path(text: &str, n: usize) -> Option<String> {
    let key = |l: &str| -> Option<(usize, String)> {
        let indent = l.len() - l.trim_start().len();
        let t = l.trim_start().trim_start_matches("- ");
        let (k, _) = t.split_once(':')?;
        let k = k.trim();
        (!k.is_empty() && !k.starts_with('#')).then(|| (indent, k.to_string()))
    };
    let lines: Vec<&str> = text.lines().collect();
    let (mut indent, own) = key(lines.get(n.checked_sub(1)?)?)?;
    let mut path = vec![own];
    for l in lines[..n - 1].iter().rev() {
        if let Some((i, k)) = key(l)
            && i < indent
        {
            path.push(k);
            indent = i;
        }
    }
    path.reverse();
    Some(path.join("."))
}

/// The response headers the exporter-toolkit lets a web config set.
const SETTABLE_HEADERS: &[&str] = &[
    "content-security-policy",
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "x-xss-protection",
];

impl WebConfig {
    /// Reads and applies `path`. Every error names the file and the key.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text =
            read_to_string_capped(path, cap::CONFIG).map_err(|source| WebConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| WebConfigError::File {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Parses a web config; relative paths in it are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<WebConfig, WebConfigError> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_saphyr::from_str(text)
                .map_err(|e| WebConfigError::Syntax(yaml_error(text, &e.to_string())))?
        };
        let mut cfg = WebConfig::default();
        if let Some(t) = file.tls_server_config {
            cfg.tls = Some(tls(t, base)?);
        }
        if let Some(h) = file.http_server_config {
            if h.http2 == Some(true) {
                log::debug!("web config: http2 is not served; HTTP/1.1 only");
            }
            for (k, v) in h.headers.unwrap_or_default() {
                let name = HeaderName::try_from(k.as_str()).map_err(|source| {
                    WebConfigError::HeaderName {
                        name: k.clone(),
                        source,
                    }
                })?;
                if !SETTABLE_HEADERS.contains(&name.as_str()) {
                    return Err(refused(format!(
                        "http_server_config.headers: {k:?} cannot be set (allowed: {})",
                        SETTABLE_HEADERS.join(", ")
                    )));
                }
                let value = HeaderValue::try_from(v.as_str()).map_err(|source| {
                    WebConfigError::HeaderValue {
                        name: k.clone(),
                        source,
                    }
                })?;
                cfg.headers.push((name, value));
            }
        }
        if let Some(users) = file.basic_auth_users
            && !users.is_empty()
        {
            cfg.basic_auth = Some(Arc::new(BasicAuth::new(users)?));
        }
        Ok(cfg)
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn tls(t: TlsServerConfig, base: &Path) -> Result<tokio_rustls::TlsAcceptor, WebConfigError> {
    for (set, key) in [
        (t.cert.is_some(), "cert (inline)"),
        (t.key.is_some(), "key (inline)"),
        (t.client_ca.is_some(), "client_ca (inline)"),
        (t.max_version.is_some(), "max_version"),
        (t.cipher_suites.is_some(), "cipher_suites"),
        (t.curve_preferences.is_some(), "curve_preferences"),
        (t.client_allowed_sans.is_some(), "client_allowed_sans"),
    ] {
        if set {
            return Err(refused(format!(
                "tls_server_config.{key} is not supported by tsm-trace (use cert_file/key_file; rustls picks safe cipher suites and curves)"
            )));
        }
    }
    let (Some(cert_file), Some(key_file)) = (&t.cert_file, &t.key_file) else {
        return Err(refused(
            "tls_server_config needs both cert_file and key_file",
        ));
    };
    let cert_path = resolve(base, cert_file);
    let key_path = resolve(base, key_file);
    let certs = read_certs(&cert_path, "tls_server_config.cert_file")?;
    let key_pem =
        read_capped(&key_path, cap::CONFIG).map_err(|source| WebConfigError::KeyFile {
            key: "tls_server_config.key_file",
            path: key_path.clone(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| WebConfigError::NoKey {
        path: key_path.clone(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version.as_deref() {
        None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some("TLS13") => &[&rustls::version::TLS13],
        Some(v @ ("TLS10" | "TLS11")) => {
            return Err(refused(format!(
                "tls_server_config.min_version {v} is not supported (TLS12 or TLS13)"
            )));
        }
        Some(v) => {
            return Err(refused(format!(
                "tls_server_config.min_version {v:?}: expected TLS12 or TLS13"
            )));
        }
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|source| WebConfigError::Tls {
            what: "the protocol versions",
            source,
        })?;
    let auth_type = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let ca = match (&t.client_ca_file, auth_type) {
        (None, "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven") => {
            return Err(refused(format!(
                "tls_server_config.client_auth_type {auth_type} needs client_ca_file"
            )));
        }
        (Some(f), _) => {
            let path = resolve(base, f);
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(&path, "tls_server_config.client_ca_file")? {
                roots.add(c).map_err(|source| WebConfigError::ClientCa {
                    path: path.clone(),
                    source,
                })?;
            }
            Some(Arc::new(roots))
        }
        (None, _) => None,
    };
    let builder = match (auth_type, ca) {
        ("NoClientCert", _) => builder.with_no_client_auth(),
        (kind @ ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven"), Some(roots)) => {
            let mut v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots,
                provider.clone(),
            );
            if kind == "VerifyClientCertIfGiven" {
                v = v.allow_unauthenticated();
            }
            let v = v.build().map_err(WebConfigError::Verifier)?;
            builder.with_client_cert_verifier(v)
        }
        (other @ ("RequestClientCert" | "RequireAnyClientCert"), _) => {
            return Err(refused(format!(
                "tls_server_config.client_auth_type {other} (a client certificate that is not verified) is not supported; use RequireAndVerifyClientCert"
            )));
        }
        (other, _) => {
            return Err(refused(format!(
                "tls_server_config.client_auth_type {other:?}: expected NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            )));
        }
    };
    let mut server =
        builder
            .with_single_cert(certs, key)
            .map_err(|source| WebConfigError::Tls {
                what: "certificate and key",
                source,
            })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    server.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

fn read_certs(
    path: &Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let pem = read_capped(path, cap::CONFIG).map_err(|source| WebConfigError::KeyFile {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|source| WebConfigError::Pem {
            key,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(WebConfigError::NoCertificate {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error and its causes on one line.
    fn err(yaml: &str) -> String {
        let e = WebConfig::parse(yaml, Path::new("/nonexistent")).unwrap_err();
        let mut s = e.to_string();
        let mut cur = std::error::Error::source(&e);
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    #[test]
    fn empty_means_plain_http() {
        let c = WebConfig::parse("", Path::new(".")).unwrap();
        assert!(c.tls.is_none() && c.basic_auth.is_none());
        let c = WebConfig::parse("basic_auth_users: {}\n", Path::new(".")).unwrap();
        assert!(c.basic_auth.is_none());
    }

    /// A malformed file gets one line naming where and what, never a Rust type.
    #[test]
    fn malformed_files_get_one_plain_line() {
        for (yaml, want) in [
            ("basic_auth_users: [a, b]\n", "basic_auth_users"),
            ("tls_server_config: 5\n", "tls_server_config"),
            ("http_server_config:\n  http2: maybe\n", "http2"),
            ("- a list\n", "line 1: expected a mapping"),
            (
                "basic_auth_users:\n  prom: [1]\n",
                "line 2 (basic_auth_users.prom)",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  cert_file: b\n",
                "line 3 (tls_server_config.cert_file): cert_file is set twice",
            ),
            (
                "http_server_config:\n  http2: maybe\n",
                "line 2 (http_server_config.http2): expected true or false",
            ),
            ("tls_server_config: {cert_file: [\n", "line"),
        ] {
            let e = err(yaml);
            assert_eq!(e.lines().count(), 1, "{yaml:?}: {e}");
            for hint in [
                "struct ",
                "Option<",
                "BTreeMap",
                "::",
                "File",
                "TlsServerConfig",
                "HttpServerConfig",
                "IgnoredAny",
                "DuplicateKeyPolicy",
                "Options",
                "-->",
            ] {
                assert!(!e.contains(hint), "{yaml:?}: {hint:?} in {e}");
            }
            assert!(e.contains(want), "{yaml:?}: {want:?} not in {e}");
        }
    }

    #[test]
    fn refusals_name_the_key() {
        for (yaml, want) in [
            ("tls_server_confg: {}\n", "tls_server_confg"),
            (
                "tls_server_config:\n  cert_file: a\n",
                "both cert_file and key_file",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
                "cipher_suites is not supported",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n",
                "tls_server_config.cert_file",
            ),
            ("basic_auth_users:\n  prom: notahash\n", "not a bcrypt hash"),
            (
                "http_server_config:\n  headers:\n    Set-Cookie: x\n",
                "cannot be set",
            ),
            ("- a list\n", ""),
        ] {
            let e = err(yaml);
            assert!(e.contains(want), "{yaml:?}: {e}");
        }
    }
}
