//! The JSON error for the answers hyper writes by itself.
//!
//! A request hyper cannot parse (a bad request line, method, URI, version or
//! header field, or a head past its own limits) never reaches a service: hyper
//! writes a bodiless 400, 431 or 414 and closes the connection, and it has no hook
//! to change that answer. This module swaps it for the JSON error every other
//! answer carries, from outside hyper:
//!
//! - per connection, a [`Turns`] counts the requests hyper handed to the service
//!   and the responses whose body hyper has finished with (dropped);
//! - [`OwnAnswersIo`] wraps the connection's stream. hyper writes everything it
//!   has buffered before it calls `poll_flush`, so a flush that finds every
//!   response finished means every byte of them has passed through. From then on,
//!   until the service is called again, the connection is *quiet*: nothing hyper
//!   writes belongs to a response of the service, and the only thing hyper writes
//!   then is its own answer to a request it could not parse;
//! - a write while quiet that is such an answer (`HTTP/1.x` 400, 414 or 431 with
//!   `content-length: 0`, the whole head in one write) is replaced by the JSON
//!   error with the same status and `connection: close`; hyper is told its bytes
//!   were written. Anything else passes through unchanged, so a function's own
//!   bodiless 400 (written while a request is in flight) is never touched.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's requests and finished responses (all touched from the
/// connection's own task; atomics only because hyper wants `Send + Sync`).
#[derive(Debug)]
pub struct Turns {
    /// Requests handed to the service.
    calls: AtomicU64,
    /// Responses whose body hyper has dropped (written, or abandoned).
    finished: AtomicU64,
    /// Every response finished and flushed through, and no request since.
    quiet: AtomicBool,
}

impl Turns {
    pub fn new() -> Arc<Turns> {
        Arc::new(Turns {
            calls: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            quiet: AtomicBool::new(true),
        })
    }

    /// hyper parsed a request and calls the service.
    pub fn request(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.quiet.store(false, Ordering::Relaxed);
    }

    /// The response body, counted as finished when hyper drops it.
    pub fn track<B>(self: &Arc<Self>, body: B) -> Tracked<B> {
        Tracked {
            body,
            turns: self.clone(),
        }
    }

    /// hyper flushes: everything it wrote before has passed through.
    fn flushed(&self) {
        if self.calls.load(Ordering::Relaxed) == self.finished.load(Ordering::Relaxed) {
            self.quiet.store(true, Ordering::Relaxed);
        }
    }

    fn quiet(&self) -> bool {
        self.quiet.load(Ordering::Relaxed)
    }
}

/// A response body that tells its connection's [`Turns`] when hyper is done with it.
pub struct Tracked<B> {
    body: B,
    turns: Arc<Turns>,
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.turns.finished.fetch_add(1, Ordering::Relaxed);
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's stream, with hyper's own answers replaced by the JSON error.
pub struct OwnAnswersIo<S> {
    inner: S,
    turns: Arc<Turns>,
    /// A replacement answer, and how much of it is written.
    pending: Vec<u8>,
    sent: usize,
}

impl<S> OwnAnswersIo<S> {
    pub fn new(inner: S, turns: Arc<Turns>) -> OwnAnswersIo<S> {
        OwnAnswersIo {
            inner,
            turns,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> OwnAnswersIo<S> {
    /// Writes what is left of a replacement answer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `head` in place of hyper's own answer if it is one; its length if so.
    fn replace(&mut self, cx: &mut Context<'_>, head: &[u8]) -> Option<Poll<io::Result<usize>>> {
        if !self.turns.quiet() || !self.pending.is_empty() {
            return None;
        }
        let answer = json_answer(head)?;
        self.pending = answer;
        self.sent = 0;
        // Written now as far as the stream takes it; the rest on flush or shutdown.
        match self.poll_drain(cx) {
            Poll::Ready(Err(e)) => Some(Poll::Ready(Err(e))),
            _ => Some(Poll::Ready(Ok(head.len()))),
        }
    }
}

/// The JSON error in place of hyper's bodiless answer `head`, if it is one.
fn json_answer(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let rest = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))?;
    if !text.ends_with("\r\n\r\n") || !text.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let (status, code, message) = match rest.get(..4)? {
        "400 " => (
            "400 Bad Request",
            "malformed_request",
            "the request is not HTTP/1.1 this server can read: its request line, method, \
             URI, version or a header field is malformed (a URI's spaces, `<`, `>` and a query's \
             `\"` must be percent-encoded, as browsers and HTTP libraries send them)",
        ),
        "414 " => (
            "414 URI Too Long",
            "uri_too_long",
            "the request URI is longer than this server reads",
        ),
        "431 " => (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            "the request head is larger, or has more header fields, than this server reads",
        ),
        _ => return None,
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for OwnAnswersIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for OwnAnswersIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if let Some(done) = self.replace(cx, buf) {
            return done;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if self.turns.quiet() && self.pending.is_empty() {
            let head: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if let Some(done) = self.replace(cx, &head) {
                return done;
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.turns.flushed();
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one connection over an in-memory pipe with the given answers; sends
    /// `request` and returns everything the server wrote until it closed.
    async fn exchange(request: &[u8], status: u16, body: &'static str) -> String {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let turns = Turns::new();
        let served = {
            let io = TokioIo::new(OwnAnswersIo::new(server, turns.clone()));
            let service =
                hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    turns.request();
                    let resp = Response::builder()
                        .status(status)
                        .body(turns.track(Full::new(bytes::Bytes::from_static(body.as_bytes()))))
                        .unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
            tokio::spawn(http1::Builder::new().serve_connection(io, service))
        };
        let (mut read, mut write) = tokio::io::split(client);
        // A server that stops reading (a head past its buffer) may close first.
        let _ = write.write_all(request).await;
        let mut out = Vec::new();
        read.read_to_end(&mut out).await.unwrap();
        let _ = served.await.unwrap();
        String::from_utf8(out).unwrap()
    }

    fn json_body(answer: &str) -> serde_json::Value {
        let (_, body) = answer.rsplit_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
    }

    #[tokio::test]
    async fn a_request_hyper_cannot_parse_gets_the_json_error() {
        for request in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"[..],
            b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        ] {
            let answer = exchange(request, 200, "fine").await;
            assert!(
                answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{answer:?}"
            );
            assert!(answer.contains("content-type: application/json\r\n"));
            assert!(answer.contains("connection: close\r\n"));
            let v = json_body(&answer);
            assert_eq!(v["error"]["code"], "malformed_request", "{v}");
        }
    }

    #[tokio::test]
    async fn a_head_past_hypers_buffer_gets_a_json_431() {
        let big = "a".repeat(500 * 1024);
        let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        let answer = exchange(request.as_bytes(), 200, "fine").await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:.80}");
        assert_eq!(json_body(&answer)["error"]["code"], "headers_too_large");
    }

    #[tokio::test]
    async fn after_good_answers_a_bad_request_still_gets_the_json_error() {
        let request = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n\
                        GET /2 HTTP/1.1\r\nHost: x\r\n\r\n\
                        GET /3 HTTP/1.1\r\nHost: x\r\nbroken\r\n\r\n";
        let answer = exchange(request, 200, "fine").await;
        assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{answer}");
        assert_eq!(answer.matches("\r\n\r\nfine").count(), 2, "{answer}");
        let (_, last) = answer.split_once("HTTP/1.1 400 Bad Request\r\n").unwrap();
        assert_eq!(json_body(last)["error"]["code"], "malformed_request");
    }

    #[tokio::test]
    async fn the_services_own_bodiless_400_passes_unchanged() {
        let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let answer = exchange(request, 400, "").await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("content-length: 0\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n"), "{answer}");
        assert!(!answer.contains("application/json"), "{answer}");

        // Also when it follows another answer on the same connection.
        let request = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n\
                        GET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let answer = exchange(request, 400, "").await;
        assert_eq!(answer.matches("HTTP/1.1 400 Bad Request\r\n").count(), 2);
        assert!(!answer.contains("application/json"), "{answer}");
    }
}
