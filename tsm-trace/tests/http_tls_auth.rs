//! TLS and basic auth from a web config file: the right client is served, the wrong one is
//! refused (401 with `WWW-Authenticate` for auth; a failed handshake for a missing or
//! unknown client certificate). Also: an idle kept-alive connection is closed after the
//! header-read timeout, and bodies and other methods are refused.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tsm_trace::exporters::metrics::Metrics;
use tsm_trace::http::{self, HttpState, Limits, Readiness, WebConfig};
use tsm_trace::pipeline::Pipeline;

struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = p.self_signed(&key).unwrap();
    Ca {
        cert,
        issuer: rcgen::Issuer::new(p, key),
    }
}

fn leaf(ca: &Ca, name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let p = CertificateParams::new(vec![name.to_string()]).unwrap();
    (p.signed_by(&key, &ca.issuer).unwrap(), key)
}

async fn start(
    web: WebConfig,
    limits: Limits,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let metrics = Arc::new(Metrics::new());
    let p = Pipeline::new(tsm_trace::correlate::Config::default(), metrics, None);
    let state = HttpState::new(Arc::new(Mutex::new(p)), Readiness::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(http::serve_with(listener, state, web, limits, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

async fn request<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &str) -> (u16, String) {
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn get(path: &str, auth: Option<&str>) -> String {
    let auth = auth
        .map(|a| {
            use base64::Engine;
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        })
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test]
async fn basic_auth_right_user_served_wrong_one_401() {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    write(
        dir.path(),
        "web.yml",
        &format!("basic_auth_users:\n  prometheus: {hash}\n"),
    );
    let web = WebConfig::load(&dir.path().join("web.yml")).unwrap();
    let (addr, _stop) = start(web, Limits::default()).await;
    let tcp = || tokio::net::TcpStream::connect(addr);
    let (st, text) = request(
        tcp().await.unwrap(),
        &get("/metrics", Some("prometheus:s3cret")),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("tsm_trace_build_info"));
    for creds in [None, Some("prometheus:wrong"), Some("root:s3cret")] {
        let (st, text) = request(tcp().await.unwrap(), &get("/metrics", creds)).await;
        assert_eq!(st, 401, "{creds:?}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("www-authenticate: basic realm="),
            "{text}"
        );
        assert!(!text.contains("tsm_trace_build_info"));
    }
}

fn client(
    roots: &rcgen::Certificate,
    cert: Option<(&rcgen::Certificate, &KeyPair)>,
) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut store = rustls::RootCertStore::empty();
    store.add(roots.der().clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    let cfg = match cert {
        None => b.with_no_client_auth(),
        Some((c, k)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from(c.der().to_vec())],
                PrivateKeyDer::try_from(k.serialize_der()).unwrap(),
            )
            .unwrap(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("server ca");
    let (srv, srv_key) = leaf(&server_ca, "localhost");
    let client_ca = ca("client ca");
    let (good, good_key) = leaf(&client_ca, "prometheus");
    let rogue_ca = ca("rogue ca");
    let (bad, bad_key) = leaf(&rogue_ca, "prometheus");
    write(dir.path(), "server.crt", &srv.pem());
    write(dir.path(), "server.key", &srv_key.serialize_pem());
    write(dir.path(), "clients.crt", &client_ca.cert.pem());
    write(
        dir.path(),
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: clients.crt\n",
    );
    let web = WebConfig::load(&dir.path().join("web.yml")).unwrap();
    let (addr, _stop) = start(web, Limits::default()).await;
    let name = ServerName::try_from("localhost").unwrap();

    // The right client certificate: served.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = client(&server_ca.cert, Some((&good, &good_key)))
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let (st, text) = request(tls, &get("/healthz", None)).await;
    assert_eq!(st, 200, "{text}");

    // No certificate, or one from another CA: the handshake (or the first read) fails.
    for cert in [None, Some((&bad, &bad_key))] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let served = match client(&server_ca.cert, cert)
            .connect(name.clone(), tcp)
            .await
        {
            Err(_) => false,
            Ok(tls) => request(tls, &get("/healthz", None)).await.0 == 200,
        };
        assert!(!served, "a client without a trusted certificate was served");
    }

    // Plain HTTP to the TLS port is not served either.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_ne!(request(tcp, &get("/healthz", None)).await.0, 200);
}

#[tokio::test]
async fn tls_server_only() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("server ca");
    let (srv, srv_key) = leaf(&server_ca, "localhost");
    write(dir.path(), "s.crt", &srv.pem());
    write(dir.path(), "s.key", &srv_key.serialize_pem());
    write(
        dir.path(),
        "web.yml",
        "tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n",
    );
    let web = WebConfig::load(&dir.path().join("web.yml")).unwrap();
    let (addr, _stop) = start(web, Limits::default()).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = client(&server_ca.cert, None)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(request(tls, &get("/metrics", None)).await.0, 200);
    // A client that does not trust the server's CA refuses it.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        client(&ca("other").cert, None)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn idle_keep_alive_is_closed_and_bodies_refused() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (addr, _stop) = start(WebConfig::default(), limits).await;
    // One request on a kept-alive connection, then silence: closed after the timeout.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
        .await
        .expect("the idle kept-alive connection was not closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (st, _) = request(
        tcp,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(st, 405);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (st, _) = request(
        tcp,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(st, 413);
    // Headers beyond the cap: 431.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let (st, _) = request(tcp, &big).await;
    assert_eq!(st, 431);
}
