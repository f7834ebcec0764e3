//! Calling a time trigger's target for one tick, through the [`Invoker`] as
//! every trigger does: the request Fission's timer sends (its `method`, the
//! `subpath`, an empty body, `X-Fission-Timer-Name`), plus the tick
//! (`X-Fusion-Timer-Tick`) and an idempotency key unique to the trigger and
//! tick. A workflow is started in the background (`X-Async: true`): the
//! firing's outcome is the run's id, not the run's result (`fusion run get`).

use std::future::Future;
use std::pin::Pin;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use jiff::Timestamp;

use super::TimeTrigger;
use crate::invoke::{Invoker, Target};

/// What calling the target gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Called {
    pub ok: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub run_id: Option<String>,
}

/// Calls a trigger's target for a tick (the invoker in the server, a recorder in tests).
pub trait Fire: Send + Sync + 'static {
    fn fire<'a>(
        &'a self,
        trigger: &'a TimeTrigger,
        tick: Timestamp,
    ) -> Pin<Box<dyn Future<Output = Called> + Send + 'a>>;
}

pub struct InvokerFire(pub Invoker);

/// How much of a failed answer's body the history keeps.
const ERROR_BODY: usize = 512;
/// The most of an answer read (the rest is dropped with the connection).
const READ_LIMIT: usize = 1 << 20;

impl Fire for InvokerFire {
    fn fire<'a>(
        &'a self,
        t: &'a TimeTrigger,
        tick: Timestamp,
    ) -> Pin<Box<dyn Future<Output = Called> + Send + 'a>> {
        Box::pin(async move {
            let target = match (&t.function_key(), &t.workflow) {
                (Some(f), _) => Target::Function(f.clone()),
                (None, Some(w)) => Target::Workflow(w.clone()),
                (None, None) => {
                    return Called {
                        error: Some("no target".into()),
                        ..Called::default()
                    }
                }
            };
            // Resolved at each tick: the trigger may have been made first.
            let target = match self.0.resolve(target) {
                Ok(target) => target,
                Err(why) => {
                    return Called {
                        error: Some(format!(
                            "{why} does not exist (yet): create it, or change the trigger; nothing was called"
                        )),
                        ..Called::default()
                    }
                }
            };
            let workflow = matches!(target, Target::Workflow(_));
            let mut req = Request::builder()
                .method(t.method.as_str())
                .uri(t.subpath.as_str())
                .header("X-Fission-Timer-Name", t.name.as_str())
                .header("X-Fusion-Timer-Tick", tick.to_string())
                .header(
                    "X-Fusion-Idempotency-Key",
                    format!("timer/{}/{}", t.key(), tick.as_millisecond()),
                );
            if workflow {
                req = req.header("X-Async", "true");
            }
            let req = match req.body(Body::empty()) {
                Ok(r) => r,
                Err(e) => {
                    return Called {
                        error: Some(format!("cannot build the request: {e}")),
                        ..Called::default()
                    }
                }
            };
            let path = t.subpath.split('?').next().unwrap_or("/");
            let resp = self.0.call(&target, req, path, &[]).await;
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), READ_LIMIT)
                .await
                .unwrap_or_default();
            outcome(status, &body, workflow)
        })
    }
}

fn outcome(status: StatusCode, body: &[u8], workflow: bool) -> Called {
    let mut called = Called {
        ok: status.is_success(),
        status: Some(status.as_u16()),
        ..Called::default()
    };
    if workflow && status == StatusCode::ACCEPTED {
        called.run_id = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string));
    }
    if !called.ok {
        let text = String::from_utf8_lossy(body);
        let mut cut: String = text.chars().take(ERROR_BODY).collect();
        if cut.len() < text.len() {
            cut.push('…');
        }
        called.error = Some(if cut.trim().is_empty() {
            format!("the target answered {status}")
        } else {
            cut
        });
    }
    called
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_keep_the_status_the_run_and_the_start_of_an_error() {
        let ok = outcome(StatusCode::OK, b"hi", false);
        assert_eq!((ok.ok, ok.status, ok.error), (true, Some(200), None));
        let run = outcome(
            StatusCode::ACCEPTED,
            br#"{"id": "r-1", "status": "running"}"#,
            true,
        );
        assert_eq!((run.ok, run.run_id.as_deref()), (true, Some("r-1")));
        let failed = outcome(StatusCode::BAD_GATEWAY, "x".repeat(2000).as_bytes(), false);
        assert!(!failed.ok);
        assert_eq!(failed.error.unwrap().chars().count(), ERROR_BODY + 1);
        let empty = outcome(StatusCode::INTERNAL_SERVER_ERROR, b"", false);
        assert_eq!(
            empty.error.as_deref(),
            Some("the target answered 500 Internal Server Error")
        );
    }
}
