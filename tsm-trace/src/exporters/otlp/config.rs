//! Where spans go: `--otlp-endpoint` and the standard `OTEL_EXPORTER_OTLP_*` variables,
//! resolved once at start into an [`OtlpConfig`], every bad value an error naming the
//! variable (or flag) and the value.
//!
//! Precedence (the OpenTelemetry specification's, with the flag first): `--otlp-endpoint`
//! (a base URL: `/v1/traces` is appended), then `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as
//! is), then `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended). None of them set: no
//! export. Protocol, headers and timeout: the `_TRACES_` variable, else the general one.

use std::collections::HashMap;
use std::time::Duration;

pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
pub const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
pub const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
/// `true` turns the export off whatever else is set (the SDK's switch).
pub const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

/// The specification's default export timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bad OTLP setting: which one, its value, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: {value:?} is not an http:// URL with a host ({why})")]
    Endpoint {
        source_name: &'static str,
        value: String,
        why: String,
    },
    #[error(
        "{source_name}: {value:?}: https needs TLS, which this build's OTLP client does not have; \
         send to a local collector over http:// (e.g. http://127.0.0.1:4318) and let it forward"
    )]
    Https {
        source_name: &'static str,
        value: String,
    },
    #[error(
        "{var}: protocol {value:?} is not supported by this build (only http/protobuf, the \
         specification's default)"
    )]
    UnsupportedProtocol { var: &'static str, value: String },
    #[error("{var}: {value:?} is not an OTLP protocol (grpc, http/protobuf, http/json)")]
    Protocol { var: &'static str, value: String },
    #[error("{var}: header {item:?} is not `name=value` with a valid HTTP header name and value")]
    Header { var: &'static str, item: String },
    #[error("{var}: {value:?} is not a timeout in milliseconds (a non-negative integer)")]
    Timeout { var: &'static str, value: String },
}

/// The resolved export settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The full URL spans are POSTed to (`…/v1/traces`).
    pub url: String,
    pub headers: HashMap<String, String>,
    pub timeout: Duration,
}

/// Resolves the settings from the flag and the environment (`env` looks a variable up; an
/// empty value counts as unset). `Ok(None)`: export is off.
pub fn resolve(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if get(SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let url = match (flag, get(TRACES_ENDPOINT), get(ENDPOINT)) {
        (Some(f), _, _) => with_traces_path(check_url("--otlp-endpoint", f)?),
        (None, Some(t), _) => check_url(TRACES_ENDPOINT, &t)?,
        (None, None, Some(e)) => with_traces_path(check_url(ENDPOINT, &e)?),
        (None, None, None) => return Ok(None),
    };
    let pick = |specific: &'static str, general: &'static str| {
        get(specific)
            .map(|v| (specific, v))
            .or_else(|| get(general).map(|v| (general, v)))
    };
    if let Some((var, p)) = pick(TRACES_PROTOCOL, PROTOCOL) {
        match p.trim() {
            "http/protobuf" => {}
            "grpc" | "http/json" => {
                return Err(ConfigError::UnsupportedProtocol { var, value: p });
            }
            _ => return Err(ConfigError::Protocol { var, value: p }),
        }
    }
    let headers = match pick(TRACES_HEADERS, HEADERS) {
        Some((var, h)) => parse_headers(var, &h)?,
        None => HashMap::new(),
    };
    let timeout = match pick(TRACES_TIMEOUT, TIMEOUT) {
        Some((var, t)) => t
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| ConfigError::Timeout { var, value: t })?,
        None => DEFAULT_TIMEOUT,
    };
    Ok(Some(OtlpConfig {
        url,
        headers,
        timeout,
    }))
}

fn check_url(source_name: &'static str, value: &str) -> Result<String, ConfigError> {
    let v = value.trim();
    let bad = |why: &str| ConfigError::Endpoint {
        source_name,
        value: value.to_string(),
        why: why.to_string(),
    };
    let uri: http::Uri = v
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(ConfigError::Https {
                source_name,
                value: value.to_string(),
            });
        }
        Some(s) => return Err(bad(&format!("scheme {s}"))),
        None => return Err(bad("no scheme")),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(bad("no host")),
    }
    if uri.query().is_some() {
        return Err(bad("a query string"));
    }
    Ok(v.to_string())
}

/// A base endpoint's traces URL: `http://c:4318` → `http://c:4318/v1/traces`.
fn with_traces_path(base: String) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// `k1=v1,k2=v2`, values percent-decoded (the specification's W3C-baggage-like format).
fn parse_headers(var: &'static str, s: &str) -> Result<HashMap<String, String>, ConfigError> {
    let mut out = HashMap::new();
    for item in s.split(',').filter(|i| !i.trim().is_empty()) {
        let bad = || ConfigError::Header {
            var,
            item: item.to_string(),
        };
        let (k, v) = item.split_once('=').ok_or_else(bad)?;
        let k = k.trim();
        let v = percent_decode(v.trim()).ok_or_else(bad)?;
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(&v).is_err()
        {
            return Err(bad());
        }
        out.insert(k.to_string(), v);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn nothing_set_is_no_export() {
        assert_eq!(resolve(None, env(&[])).unwrap(), None);
        assert_eq!(resolve(None, env(&[(ENDPOINT, " ")])).unwrap(), None);
    }

    #[test]
    fn endpoint_precedence_and_paths() {
        let c = resolve(None, env(&[(ENDPOINT, "http://c:4318/")]))
            .unwrap()
            .unwrap();
        assert_eq!(c.url, "http://c:4318/v1/traces");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        let c = resolve(
            None,
            env(&[
                (ENDPOINT, "http://a:1"),
                (TRACES_ENDPOINT, "http://t:2/custom"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.url, "http://t:2/custom", "the traces variable as is");
        let c = resolve(
            Some("http://f:3"),
            env(&[(TRACES_ENDPOINT, "http://t:2/custom")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.url, "http://f:3/v1/traces", "the flag first");
        assert_eq!(
            resolve(Some("http://f:3"), env(&[(SDK_DISABLED, "true")])).unwrap(),
            None
        );
    }

    #[test]
    fn protocol_headers_timeout() {
        let c = resolve(
            Some("http://f:3"),
            env(&[
                (PROTOCOL, "http/protobuf"),
                (HEADERS, "a=1,b=x%20y"),
                (TRACES_HEADERS, "api-key=s%3Dcret"),
                (TIMEOUT, "2500"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            c.headers.len(),
            1,
            "the traces variable wins: {:?}",
            c.headers
        );
        assert_eq!(c.headers["api-key"], "s=cret");
        assert_eq!(c.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn bad_values_name_the_variable_and_value() {
        for (flag, vars, want) in [
            (
                Some("localhost:4318"),
                vec![],
                "--otlp-endpoint: \"localhost:4318\"",
            ),
            (Some("ftp://h/"), vec![], "scheme ftp"),
            (Some("http:///x"), vec![], "--otlp-endpoint"),
            (None, vec![(ENDPOINT, "https://c:4318")], "https needs TLS"),
            (
                Some("http://c"),
                vec![(PROTOCOL, "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL: protocol \"grpc\" is not supported",
            ),
            (
                Some("http://c"),
                vec![(TRACES_PROTOCOL, "udp")],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: \"udp\" is not an OTLP protocol",
            ),
            (
                Some("http://c"),
                vec![(HEADERS, "novalue")],
                "OTEL_EXPORTER_OTLP_HEADERS: header \"novalue\"",
            ),
            (
                Some("http://c"),
                vec![(HEADERS, "a=%zz")],
                "header \"a=%zz\"",
            ),
            (
                Some("http://c"),
                vec![(TIMEOUT, "10s")],
                "OTEL_EXPORTER_OTLP_TIMEOUT: \"10s\"",
            ),
        ] {
            let e = resolve(flag, env(&vars)).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }
}
