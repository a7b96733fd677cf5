//! HTTP GET to servers on this machine (Prometheus, and tsm-trace through qemu's forwarded
//! port): plain http on 127.0.0.1 through ureq, no proxy, every status answered as it is.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use ureq::Agent;

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        Agent::new_with_config(
            Agent::config_builder()
                // Prometheus answers errors (400, 422, 503) with a JSON body the caller reads.
                .http_status_as_error(false)
                // Loopback only: never through a proxy from the environment.
                .proxy(None)
                .timeout_connect(Some(Duration::from_secs(5)))
                .timeout_recv_response(Some(Duration::from_secs(30)))
                .timeout_recv_body(Some(Duration::from_secs(30)))
                .build(),
        )
    })
}

/// `GET path?query` on 127.0.0.1:port → (status, body); the query's values percent-encoded.
pub(super) fn get(port: u16, path: &str, query: &[(&str, &str)]) -> Result<(u16, String)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut req = agent().get(&url);
    for (k, v) in query {
        req = req.query(*k, *v);
    }
    let mut resp = req.call().with_context(|| format!("GET {url}"))?;
    let code = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("GET {url}: reading the body"))?;
    Ok((code, body))
}

/// `GET path` on 127.0.0.1:port with an `Accept` header → (status, content type, body).
pub(super) fn get_accept(port: u16, path: &str, accept: &str) -> Result<(u16, String, String)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut resp = agent()
        .get(&url)
        .header("Accept", accept)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let code = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("GET {url}: reading the body"))?;
    Ok((code, ct, body))
}
