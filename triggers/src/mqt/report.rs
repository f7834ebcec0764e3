//! What the error topic gets when a message fails: what went wrong, where the
//! message came from, and its payload (as text when it is UTF-8, else in
//! base64, so that it can be replayed), cut so that the whole report fits in
//! one NATS message and saying so (`payloadTruncated`, `payloadSize`).

use std::ops::Not;

use base64::Engine;
use serde::Serialize;

/// What a report leaves for its headers (idempotency key, `Nats-Msg-Id`,
/// `Content-Type`) out of the server's max payload, which counts them too.
pub const HEADERS_ROOM: usize = 1024;

/// Where the failed message came from and what became of it.
pub struct Failed<'a> {
    /// The answer's status, when there was one.
    pub status: Option<u16>,
    /// The start of the failed answer's body.
    pub body: &'a str,
    pub message: &'a str,
    pub attempts: u32,
    pub trigger: &'a str,
    pub namespace: &'a str,
    pub topic: &'a str,
    pub stream: &'a str,
    pub sequence: u64,
    pub key: &'a str,
}

#[derive(Serialize)]
struct ErrorDoc<'a> {
    status: Option<u16>,
    body: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    error: ErrorDoc<'a>,
    attempts: u32,
    trigger: &'a str,
    namespace: &'a str,
    topic: &'a str,
    stream: &'a str,
    sequence: u64,
    idempotency_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    /// Only part of the payload (or none of it) is in the report.
    #[serde(skip_serializing_if = "Not::not")]
    payload_truncated: bool,
    /// The whole payload's size in bytes, when it is cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_size: Option<usize>,
}

/// The report as JSON, at most `limit` bytes long when that can be done by
/// cutting the payload (or leaving it out).
pub fn render(failed: &Failed<'_>, payload: &[u8], limit: usize) -> String {
    let text = std::str::from_utf8(payload).ok();
    let doc = |cut: Option<usize>| {
        let mut r = Report {
            error: ErrorDoc {
                status: failed.status,
                body: failed.body,
                message: failed.message,
            },
            attempts: failed.attempts,
            trigger: failed.trigger,
            namespace: failed.namespace,
            topic: failed.topic,
            stream: failed.stream,
            sequence: failed.sequence,
            idempotency_key: failed.key,
            payload: None,
            payload_base64: None,
            payload_truncated: false,
            payload_size: None,
        };
        let n = cut.unwrap_or(payload.len());
        match text {
            Some(t) => r.payload = Some(&t[..n]),
            None => r.payload_base64 = Some(base64_of(&payload[..n])),
        }
        if n < payload.len() {
            r.payload_truncated = true;
            r.payload_size = Some(payload.len());
        }
        // Plain data: serializing cannot fail.
        serde_json::to_string(&r).unwrap_or_default()
    };
    let whole = doc(None);
    if whole.len() <= limit {
        return whole;
    }
    // What the report takes without its payload, then as much payload as fits.
    let room = limit.saturating_sub(doc(Some(0)).len());
    let cut = match text {
        Some(t) => text_prefix(t, room),
        None => room / 4 * 3,
    };
    doc(Some(cut))
}

fn base64_of(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The longest prefix of `t` (in bytes, on a char boundary) whose JSON
/// string escape takes at most `room` bytes.
fn text_prefix(t: &str, room: usize) -> usize {
    let mut used = 0;
    for (i, c) in t.char_indices() {
        used += escaped_len(c);
        if used > room {
            return i;
        }
    }
    t.len()
}

/// How many bytes `serde_json` writes for `c` inside a string.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn failed() -> Failed<'static> {
        Failed {
            status: Some(500),
            body: "out of stock",
            message: "the function \"fail\" answered 500",
            attempts: 3,
            trigger: "ferr",
            namespace: "default",
            topic: "orders.fail",
            stream: "ORDERS",
            sequence: 7,
            key: "ORDERS-7",
        }
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn a_small_text_payload_is_whole() {
        let doc = parse(&render(&failed(), b"{\"sku\": 7}", 1 << 20));
        assert_eq!(doc["payload"], "{\"sku\": 7}");
        assert_eq!(doc["idempotencyKey"], "ORDERS-7");
        assert_eq!(doc["error"]["status"], 500);
        assert!(doc.get("payloadBase64").is_none(), "{doc}");
        assert!(doc.get("payloadTruncated").is_none(), "{doc}");
    }

    #[test]
    fn a_binary_payload_is_in_base64() {
        let doc = parse(&render(&failed(), b"\xff\xfe\x00binary", 1 << 20));
        assert!(doc.get("payload").is_none(), "{doc}");
        assert_eq!(doc["payloadBase64"], "//4AYmluYXJ5");
    }

    #[test]
    fn quotes_that_double_when_escaped_are_cut_to_fit() {
        let payload = "\"".repeat(600_000);
        let limit = (1 << 20) - HEADERS_ROOM;
        let s = render(&failed(), payload.as_bytes(), limit);
        assert!(s.len() <= limit, "{}", s.len());
        let doc = parse(&s);
        assert_eq!(doc["payloadTruncated"], true);
        assert_eq!(doc["payloadSize"], 600_000);
        let kept = doc["payload"].as_str().unwrap();
        assert!(kept.len() > 500_000 && payload.starts_with(kept));
        // Cut to the byte: one more quote would not fit.
        assert!(s.len() + 2 > limit, "{}", s.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the payload, the report fits (when the rest of it does),
        /// holds a prefix of the payload, and says whether it is all of it.
        #[test]
        fn a_report_fits_and_keeps_a_prefix_of_the_payload(
            payload in proptest::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), Just(0u8), Just(0xffu8),
                            Just(b'a'), 0xc3u8..=0xc3, 0xa9u8..=0xa9],
                0..1500),
            limit in 600usize..2500,
        ) {
            let s = render(&failed(), &payload, limit);
            prop_assert!(s.len() <= limit, "{} > {limit}", s.len());
            let doc = parse(&s);
            let kept: Vec<u8> = match (doc["payload"].as_str(), doc["payloadBase64"].as_str()) {
                (Some(t), None) => t.as_bytes().to_vec(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
                other => panic!("one of payload and payloadBase64: {other:?}"),
            };
            prop_assert!(payload.starts_with(&kept));
            prop_assert_eq!(doc["payloadTruncated"] == true, kept.len() < payload.len());
            prop_assert_eq!(std::str::from_utf8(&payload).is_ok(), doc["payload"].is_string());
        }
    }
}
