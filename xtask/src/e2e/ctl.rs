//! The control server the guest's `gate` calls reach (as 10.0.2.2 through qemu's user
//! network): a gate answers 200 once the host opened it, 503 before.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// The host end of the guest's `gate` calls: `GET /<gate>` answers 200 once `open(gate)` was
/// called, 503 before; every requested gate is remembered (`seen`).
pub(super) struct CtlServer {
    pub(super) port: u16,
    state: Arc<Mutex<(BTreeSet<String>, BTreeSet<String>)>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CtlServer {
    pub(super) fn start(open: &[&str]) -> Result<CtlServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the control server")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new((
            open.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
            BTreeSet::new(),
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = serve_gate(s, &st);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(CtlServer {
            port,
            state,
            stop,
            thread: Some(thread),
        })
    }

    pub(super) fn open(&self, gate: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.0.insert(gate.to_owned());
        }
    }

    pub(super) fn seen_all(&self) -> BTreeSet<String> {
        self.state.lock().map(|s| s.1.clone()).unwrap_or_default()
    }

    pub(super) fn seen(&self, gate: &str) -> bool {
        self.state.lock().is_ok_and(|s| s.1.contains(gate))
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Gates = Mutex<(BTreeSet<String>, BTreeSet<String>)>;

fn serve_gate(mut s: TcpStream, state: &Gates) -> Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let req = String::from_utf8_lossy(&buf);
    let gate = req
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    let open = {
        let mut st = state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        st.1.insert(gate.clone());
        st.0.contains(&gate)
    };
    let reply = if open {
        "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\ngo\n"
    } else {
        "HTTP/1.0 503 Wait\r\nContent-Length: 5\r\n\r\nwait\n"
    };
    s.write_all(reply.as_bytes())?;
    Ok(())
}
