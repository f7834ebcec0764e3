//! The result envelope an invocation's `onSuccess` / `onFailure` destination
//! gets (Lambda-shaped, as Fission's RFC-0024 has it), and the depth that stops
//! destinations from calling each other without end. Pure.

use serde_json::{json, Value};

use super::record::Invocation;

/// Destinations of destinations go this deep at most (the first call is 0).
pub const MAX_DEPTH: u32 = 3;
/// Carries the depth on a destination's request.
pub const DEPTH_HEADER: &str = "x-fusion-invocation-depth";
/// The most of the request and of the answer an envelope carries.
const PAYLOAD_LIMIT: usize = 64 * 1024;

/// How an invocation ended, as the envelope says it.
pub fn condition(inv: &Invocation) -> &'static str {
    match inv.reason.as_deref() {
        None => "Success",
        Some("http_4xx") => "Http4xx",
        Some("expired") => "EventAgeExceeded",
        Some(_) => "RetriesExhausted",
    }
}

/// The depth of an invocation: 0, or one more than the invocation whose
/// destination it is.
pub fn depth(inv: &Invocation) -> u32 {
    inv.request
        .headers
        .iter()
        .find(|(k, _)| k == DEPTH_HEADER)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A body as Fission's envelope carries it: base64 (any bytes survive); left
/// out past the limit.
fn payload(bytes: &[u8]) -> Option<Value> {
    use base64::Engine as _;
    if bytes.len() > PAYLOAD_LIMIT {
        return None;
    }
    Some(Value::String(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}

/// The envelope for `inv`, whose request body was `request_body`.
pub fn envelope(inv: &Invocation, request_body: &[u8]) -> Value {
    let mut e = json!({
        "version": "1.0",
        "requestContext": {
            "invocationId": inv.id,
            // Always `<namespace>/<name>`, as Fission's `functionRef`.
            "functionRef": format!("{}/{}", inv.namespace, inv.function),
            "condition": condition(inv),
            "attempts": inv.attempts_in_cycle(),
        },
    });
    if let Some(p) = payload(request_body) {
        e["requestPayload"] = p;
    }
    if let Some(r) = &inv.response {
        e["responseContext"] = json!({"statusCode": r.status});
        if let Some(body) = &r.body {
            if let Some(p) = payload(body.as_bytes()) {
                e["responsePayload"] = p;
            }
        } else if let Some(b64) = &r.body_base64 {
            // Kept in base64 already (not UTF-8).
            e["responsePayload"] = Value::String(b64.clone());
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocations::record::{Status, StoredRequest, StoredResponse};
    use axum::http::HeaderMap;

    #[test]
    fn the_envelope_says_how_it_ended_with_both_payloads() {
        let mut inv = Invocation {
            id: "i".into(),
            namespace: "shop".into(),
            function: "f".into(),
            status: Status::Dead,
            created_ms: 0,
            updated_ms: 0,
            finished_ms: None,
            next_attempt_ms: None,
            cycle: 0,
            cycle_started_ms: 0,
            attempts: Vec::new(),
            request: StoredRequest {
                method: "POST".into(),
                path: "/".into(),
                query: None,
                headers: vec![(DEPTH_HEADER.into(), "2".into())],
                params: Vec::new(),
                body_bytes: 0,
            },
            response: Some(StoredResponse::new(500, &HeaderMap::new(), b"down", false)),
            error: None,
            reason: Some("retries_exhausted".into()),
            destination_invocation: None,
            destination_error: None,
        };
        let e = envelope(&inv, br#"{"order": 7}"#);
        assert_eq!(e["requestContext"]["functionRef"], "shop/f");
        assert_eq!(e["requestContext"]["condition"], "RetriesExhausted");
        // Payloads in base64, as Fission's destinations decode them.
        assert_eq!(e["requestPayload"], "eyJvcmRlciI6IDd9");
        assert_eq!(e["responseContext"]["statusCode"], 500);
        assert_eq!(e["responsePayload"], "ZG93bg==");
        assert_eq!(depth(&inv), 2);
        inv.reason = Some("expired".into());
        assert_eq!(condition(&inv), "EventAgeExceeded");
        let big = vec![b'x'; PAYLOAD_LIMIT + 1];
        assert!(envelope(&inv, &big).get("requestPayload").is_none());
        // The default namespace is named too, as Fission's `functionRef` is.
        inv.namespace = "default".into();
        assert_eq!(
            envelope(&inv, b"")["requestContext"]["functionRef"],
            "default/f"
        );
    }
}
