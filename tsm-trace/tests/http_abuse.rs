//! 2,000 idle half-open connections (half a request header each, never finished) against the
//! daemon's HTTP server with its default limits (but a 1 s header-read timeout): memory stays
//! bounded, `/metrics` answers within 1 s throughout, and every idle connection is closed
//! (evicted at the connection cap, or after the header-read timeout).
//!
//! Run alone to see the figures: `cargo test -p tsm-trace --test http_abuse -- --nocapture`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tsm_trace::exporters::metrics::Metrics;
use tsm_trace::http::{self, HttpState, Limits, Readiness, WebConfig};
use tsm_trace::pipeline::Pipeline;

const IDLE: usize = 2000;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn raise_fd_limit(want: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_cur < want {
        r.rlim_cur = want.min(r.rlim_max);
        // SAFETY: valid pointer.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
}

async fn get_metrics(addr: std::net::SocketAddr) -> (u16, usize) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, buf.len())
}

#[tokio::test(flavor = "current_thread")]
async fn idle_half_open_connections_are_bounded() {
    raise_fd_limit(3 * IDLE as u64 + 256);
    let metrics = Arc::new(Metrics::new());
    let p = Pipeline::new(tsm_trace::correlate::Config::default(), metrics, None);
    let state = HttpState::new(Arc::new(Mutex::new(p)), Readiness::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let header_timeout = Duration::from_secs(1);
    let limits = Limits {
        header_read_timeout: header_timeout,
        ..Limits::default()
    };
    let cap = limits.max_connections;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve_with(
        listener,
        state,
        WebConfig::default(),
        limits,
        async {
            let _ = rx.await;
        },
    ));
    assert_eq!(get_metrics(addr).await.0, 200);
    let before = rss_kib();

    let start = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        idle.push(tokio::spawn(async move {
            let mut b = [0u8; 64];
            // EOF or reset: the server closed it.
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return Instant::now(),
                    Ok(_) => {}
                }
            }
        }));
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let opened_in = start.elapsed();

    // /metrics answers within 1 s while they are held.
    let t = Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(1), get_metrics(addr))
        .await
        .expect("/metrics did not answer within 1 s under 2,000 idle connections");
    assert_eq!(status, 200);
    let metrics_in = t.elapsed();
    let during = rss_kib();

    // Every idle connection is closed: evicted at the cap, or after the header timeout.
    let mut last = start;
    for h in idle {
        let closed = tokio::time::timeout(header_timeout + Duration::from_secs(3), h)
            .await
            .expect("an idle connection was still open 3 s after the header-read timeout")
            .unwrap();
        last = last.max(closed);
    }
    let growth = during.saturating_sub(before);
    println!(
        "{IDLE} idle half-open connections (cap {cap}) opened in {opened_in:?}: RSS {before} KiB -> {during} KiB (+{growth} KiB); /metrics answered in {metrics_in:?}; all closed {:?} after the first was opened",
        last - start
    );
    assert!(
        growth < 24 * 1024,
        "RSS grew by {growth} KiB with {IDLE} idle connections"
    );
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
