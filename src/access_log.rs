//! The router's access log (`--access-log`): one line per request to the
//! router listener once its answer has gone out (or its caller went away),
//! with the caller's address, the method, the path, the status, the bytes of
//! the answer's body and the time from the request to its last byte, as a web
//! server's access log has them. The query is left out: callers put tokens
//! there. Lines go to the server's log under the target `fusion::access`
//! (JSON fields with `FUSION_LOG_FORMAT=json`; `FUSION_LOG` filters them).
//! A caller that goes away before the answer's head has a line with status
//! 499, as nginx logs it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};

/// What is known of a request when it arrives.
pub struct Entry {
    client: Option<std::net::IpAddr>,
    method: Method,
    path: String,
    started: Instant,
}

impl Entry {
    pub fn of(req: &Request<Body>) -> Entry {
        Entry {
            client: req
                .extensions()
                .get::<pool_manager::ClientAddr>()
                .map(|c| c.0.ip()),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            started: Instant::now(),
        }
    }

    /// The answer, whose body logs the line when it ends or is dropped.
    pub fn answered(self, resp: Response<Body>) -> Response<Body> {
        let status = resp.status();
        resp.map(|inner| {
            Body::new(Logged {
                inner,
                entry: Some(self),
                status,
                bytes: 0,
            })
        })
    }
}

/// An answer's body that counts its bytes and logs its request's line once.
struct Logged {
    inner: Body,
    entry: Option<Entry>,
    status: StatusCode,
    bytes: u64,
}

/// The status a request's line has when its caller went away before the
/// answer's head (nginx's "client closed request").
const CALLER_WENT_AWAY: u16 = 499;

/// A request being answered: its line is written as `CALLER_WENT_AWAY`
/// when it is dropped before the answer (the caller hung up, the connection
/// broke).
pub struct Pending(Option<Entry>);

impl Pending {
    pub fn new(entry: Entry) -> Pending {
        Pending(Some(entry))
    }

    /// The answer, whose body logs the line.
    pub fn answered(mut self, resp: Response<Body>) -> Response<Body> {
        match self.0.take() {
            Some(entry) => entry.answered(resp),
            None => resp,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(e) = self.0.take() {
            write_line(&e, CALLER_WENT_AWAY, 0, false);
        }
    }
}

/// The line of one request.
fn write_line(e: &Entry, status: u16, bytes: u64, complete: bool) {
    let client = e.client.map(|c| c.to_string()).unwrap_or_default();
    tracing::info!(
        target: "fusion::access",
        client = %client,
        method = %e.method,
        path = %e.path,
        status,
        bytes,
        ms = (e.started.elapsed().as_secs_f64() * 1e3 * 1e3).round() / 1e3,
        complete,
    );
}

impl Logged {
    fn log(&mut self, complete: bool) {
        if let Some(e) = self.entry.take() {
            write_line(&e, self.status.as_u16(), self.bytes, complete);
        }
    }
}

impl HttpBody for Logged {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.log(true);
                }
            }
            Poll::Ready(None) => self.log(true),
            Poll::Ready(Some(Err(_))) => self.log(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // An empty body is never polled, nor the body of an answer to HEAD;
        // another body dropped before its end is a caller that went away (or
        // a server that stopped).
        let head = self
            .entry
            .as_ref()
            .is_some_and(|e| e.method == Method::HEAD);
        let complete = head || self.inner.is_end_stream();
        self.log(complete);
    }
}
