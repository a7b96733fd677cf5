//! The accept loop: every connection is bounded in number, in time and in size.
//!
//! - **Connections**: at most [`Limits::max_connections`] at once. When a new one arrives at
//!   the cap, the connection idle the longest (one that has not sent a complete request
//!   header, preferring those that never made a request) is closed to make room; if every
//!   connection is in the middle of a request, the new one is closed instead. A scraper thus
//!   always gets through a flood of idle or half-open connections.
//! - **Time**: a request header (and a TLS handshake) must arrive within
//!   [`Limits::header_read_timeout`], also between requests on a kept-alive connection; a
//!   request, from its header to the last byte of the response handed to the kernel, has
//!   [`Limits::request_timeout`].
//! - **Size**: request headers at most [`Limits::max_header_bytes`]; only `GET`/`HEAD`
//!   without a body are served (405, 413 otherwise).
//! - **Shutdown**: when `shutdown` completes, the listener is closed, every connection is
//!   asked to finish, and after [`Limits::shutdown_grace`] the rest are dropped: `serve`
//!   returns within that grace whatever the clients do.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service;

use super::auth::BasicAuth;
use super::web_config::WebConfig;

/// Bounds on what clients can make the server hold. [`Limits::default`] is the daemon's.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once (TCP, TLS included).
    pub max_connections: usize,
    /// Time for a client to send a whole request header (and to finish a TLS handshake),
    /// counted from the connection or from the end of the previous response.
    pub header_read_timeout: Duration,
    /// Time from a request's header to the end of its response.
    pub request_timeout: Duration,
    /// Request line and headers, in bytes.
    pub max_header_bytes: usize,
    /// After shutdown is asked, how long connections may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// The smallest header limit hyper accepts (its read buffer).
const MIN_HEADER_BYTES: usize = 8192;

/// What one connection's task shares with the accept loop.
#[derive(Debug)]
struct ConnState {
    /// Milliseconds since `epoch` when the current request started; 0 when none is running.
    busy_since_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last activity (accept, end of a response).
    last_active_ms: AtomicU64,
    /// Requests started on this connection.
    requests: AtomicU64,
}

struct Entry {
    state: Arc<ConnState>,
    evict: Option<oneshot::Sender<()>>,
}

/// Open connections, for the cap and for eviction.
struct Registry {
    epoch: Instant,
    next_id: u64,
    open: HashMap<u64, Entry>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        now_ms(self.epoch)
    }

    /// The connection to close to make room: not in a request; never used before used;
    /// idle the longest first.
    fn victim(&self) -> Option<u64> {
        self.open
            .iter()
            .filter(|(_, e)| e.state.busy_since_ms.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, e)| {
                (
                    e.state.requests.load(Ordering::Relaxed) > 0,
                    e.state.last_active_ms.load(Ordering::Relaxed),
                )
            })
            .map(|(&id, _)| id)
    }
}

fn now_ms(epoch: Instant) -> u64 {
    // +1: 0 means "not busy".
    epoch.elapsed().as_millis() as u64 + 1
}

/// What every request passes through before the router.
#[derive(Clone)]
struct Front {
    router: Router,
    auth: Option<Arc<BasicAuth>>,
    headers: Arc<Vec<(header::HeaderName, HeaderValue)>>,
}

impl Front {
    async fn handle(self, req: Request<Incoming>, guard: BusyGuard) -> Response<Body> {
        let headers = self.headers.clone();
        let mut resp = self.check_then_route(req).await;
        for (k, v) in headers.iter() {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
        resp.map(|b| {
            Body::new(GuardedBody {
                inner: b,
                _guard: guard,
            })
        })
    }

    async fn check_then_route(mut self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return close(r);
        }
        let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            return close(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "requests carry no body here\n",
            ));
        }
        if let Some(auth) = &self.auth
            && let Err(resp) = auth.check(req.headers()).await
        {
            return resp;
        }
        let req = req.map(Body::new);
        match self.router.call(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn close(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Marks a connection busy from the request header until its response body is dropped
/// (hyper drops it once the last byte is written out).
struct BusyGuard {
    state: Arc<ConnState>,
    epoch: Instant,
}

impl BusyGuard {
    fn start(state: Arc<ConnState>, epoch: Instant) -> Self {
        state.requests.fetch_add(1, Ordering::Relaxed);
        state.busy_since_ms.store(now_ms(epoch), Ordering::Relaxed);
        BusyGuard { state, epoch }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.state
            .last_active_ms
            .store(now_ms(self.epoch), Ordering::Relaxed);
        self.state.busy_since_ms.store(0, Ordering::Relaxed);
    }
}

struct GuardedBody {
    inner: Body,
    _guard: BusyGuard,
}

impl hyper::body::Body for GuardedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then returns within
/// `limits.shutdown_grace`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    web: WebConfig,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let epoch = Instant::now();
    let registry = Arc::new(Mutex::new(Registry {
        epoch,
        next_id: 0,
        open: HashMap::new(),
    }));
    let front = Front {
        router,
        auth: web.basic_auth,
        headers: Arc::new(web.headers),
    };
    let tls = web.tls;
    let limits = Arc::new(limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    let mut accept_errors: u64 = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ECONNABORTED...: keep serving the connections we
                // have; try again shortly rather than spin.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    log::warn!(
                        "accepting an HTTP connection failed ({accept_errors} times so far): {e}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (id, state, evict_rx) = {
            let mut reg = registry.lock().unwrap_or_else(|p| p.into_inner());
            if reg.open.len() >= limits.max_connections {
                match reg.victim() {
                    Some(v) => {
                        if let Some(e) = reg.open.get_mut(&v)
                            && let Some(tx) = e.evict.take()
                        {
                            let _ = tx.send(());
                        }
                        reg.open.remove(&v);
                    }
                    None => {
                        log::debug!(
                            "closing a connection from {peer}: {} connections are all in requests",
                            reg.open.len()
                        );
                        drop(tcp);
                        continue;
                    }
                }
            }
            let id = reg.next_id;
            reg.next_id += 1;
            let now = reg.now_ms();
            let state = Arc::new(ConnState {
                busy_since_ms: AtomicU64::new(0),
                last_active_ms: AtomicU64::new(now),
                requests: AtomicU64::new(0),
            });
            let (tx, rx) = oneshot::channel();
            reg.open.insert(
                id,
                Entry {
                    state: state.clone(),
                    evict: Some(tx),
                },
            );
            (id, state, rx)
        };
        let conn = Conn {
            front: front.clone(),
            limits: limits.clone(),
            state,
            epoch,
            stop: stop_rx.clone(),
            evict: evict_rx,
        };
        let tls = tls.clone();
        let registry = registry.clone();
        tasks.spawn(async move {
            match tls {
                None => conn.run(tcp).await,
                Some(acceptor) => {
                    let hs =
                        tokio::time::timeout(conn.limits.header_read_timeout, acceptor.accept(tcp));
                    let mut evict = conn.evict;
                    let mut stop = conn.stop.clone();
                    let stream = tokio::select! {
                        r = hs => match r {
                            Ok(Ok(s)) => Some(s),
                            Ok(Err(e)) => {
                                log::debug!("TLS handshake with {peer} failed: {e}");
                                None
                            }
                            Err(_) => None,
                        },
                        _ = &mut evict => None,
                        _ = stop.wait_for(|s| *s) => None,
                    };
                    if let Some(s) = stream {
                        Conn { evict, ..conn }.run(s).await;
                    }
                }
            }
            registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .open
                .remove(&id);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + limits.shutdown_grace;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                log::info!(
                    "dropping {} HTTP connections still open {:?} after shutdown",
                    tasks.len(),
                    limits.shutdown_grace
                );
                tasks.abort_all();
                break;
            }
        }
    }
    Ok(())
}

struct Conn {
    front: Front,
    limits: Arc<Limits>,
    state: Arc<ConnState>,
    epoch: Instant,
    stop: watch::Receiver<bool>,
    evict: oneshot::Receiver<()>,
}

impl Conn {
    async fn run<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Conn {
            front,
            limits,
            state,
            epoch,
            mut stop,
            mut evict,
        } = self;
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
            .max_headers(64);
        let svc_state = state.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = BusyGuard::start(svc_state.clone(), epoch);
            let front = front.clone();
            async move { Ok::<_, Infallible>(front.handle(req, guard).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let mut stopping = false;
        loop {
            // The request watchdog: wake when the running request would time out.
            let busy = state.busy_since_ms.load(Ordering::Relaxed);
            let check_in = if busy == 0 {
                limits.request_timeout
            } else {
                let elapsed = Duration::from_millis(now_ms(epoch).saturating_sub(busy));
                if elapsed >= limits.request_timeout {
                    log::debug!(
                        "closing an HTTP connection: request took over {:?}",
                        limits.request_timeout
                    );
                    return;
                }
                limits.request_timeout - elapsed
            };
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = &mut evict => return,
                _ = stop.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep(check_in) => {}
            }
        }
    }
}
