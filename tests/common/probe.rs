//! A loopback HTTP server that test functions call to leave traces and wait
//! for the test: functions run in containers and cannot see the test's files, but
//! they share the host's network. Scripts call it with curl:
//! - `GET /log/<name>?<line>`: appends `<line>` (URL-decoded) to the log `<name>`;
//! - `GET /gate/<name>`: answers once the test opens the gate (each arrival
//!   is counted: `Probe::arrivals`);
//! - `GET /flag/<name>`: 200 when the test has set the flag, else 404;
//! - `GET /count/<name>`: adds one to a counter and answers its new value.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
struct State {
    logs: HashMap<String, Vec<String>>,
    open: HashSet<String>,
    counts: HashMap<String, u64>,
    arrivals: HashMap<String, u64>,
}

#[derive(Clone)]
pub struct Probe {
    pub base: String,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Probe {
    pub fn start() -> Probe {
        let listener = TcpListener::bind("127.0.0.1:0").expect("probe listener");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let probe = Probe {
            base,
            state: Arc::default(),
        };
        let p = probe.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let p = p.clone();
                std::thread::spawn(move || p.serve(conn));
            }
        });
        probe
    }

    /// A shell function that logs `<tag> <idempotency key>` to this probe's
    /// `calls`, waits for the probe's gate `<tag>` if `gated`, then answers `<tag>`.
    pub fn recorder(&self, tag: &str, gated: bool) -> String {
        let wait = if gated {
            format!("{}\n", self.curl(&format!("/gate/{tag}")))
        } else {
            String::new()
        };
        format!(
            "#!/bin/sh\n{}\n{wait}printf '{tag}'\n",
            self.curl(&format!("/log/calls?{tag}+$HTTP_X_FUSION_IDEMPOTENCY_KEY"))
        )
    }

    /// The shell command that calls `path` on the probe (quiet; fails on 4xx/5xx).
    /// In double quotes: the shell expands variables in `path`.
    pub fn curl(&self, path: &str) -> String {
        format!("curl -sf \"{}{path}\"", self.base)
    }

    pub fn lines(&self, log: &str) -> Vec<String> {
        let st = self.state.0.lock().unwrap();
        st.logs.get(log).cloned().unwrap_or_default()
    }

    pub fn open(&self, gate: &str) {
        self.state.0.lock().unwrap().open.insert(gate.to_string());
        self.state.1.notify_all();
    }

    /// How many requests came to the gate `gate`.
    pub fn arrivals(&self, gate: &str) -> u64 {
        let st = self.state.0.lock().unwrap();
        st.arrivals.get(gate).copied().unwrap_or(0)
    }

    /// Flags are gates nobody waits on.
    pub fn set(&self, flag: &str) {
        self.open(flag);
    }

    fn serve(&self, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut request = String::new();
        if reader.read_line(&mut request).is_err() {
            return;
        }
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => break,
                Ok(_) if header.trim().is_empty() => break,
                Ok(_) => {}
            }
        }
        let target = request.split_whitespace().nth(1).unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (verb, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (lock, cond) = &*self.state;
        let (status, body) = match verb {
            "log" => {
                let line = decode(query);
                lock.lock()
                    .unwrap()
                    .logs
                    .entry(name.into())
                    .or_default()
                    .push(line);
                (200, String::new())
            }
            "gate" => {
                let mut st = lock.lock().unwrap();
                *st.arrivals.entry(name.into()).or_default() += 1;
                while !st.open.contains(name) {
                    st = cond.wait(st).unwrap();
                }
                (200, String::new())
            }
            "flag" if lock.lock().unwrap().open.contains(name) => (200, String::new()),
            "flag" => (404, String::new()),
            "count" => {
                let mut st = lock.lock().unwrap();
                let n = st.counts.entry(name.into()).or_default();
                *n += 1;
                (200, n.to_string())
            }
            _ => (404, String::new()),
        };
        let mut conn = conn;
        let _ = write!(
            conn,
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// Percent-decoding of a query string (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
