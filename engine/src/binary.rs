//! Bodies that are not UTF-8 text (an image, an archive) as a run holds them:
//! `{"$bytes": "<base64>"}`. A request body, a function's answer or a task's
//! output of that kind goes on as those bytes (to a function, or as the run's
//! answer) instead of being turned into text with replacement characters.

use base64::Engine as _;
use serde_json::{json, Value};

/// The one key of a bytes value.
pub const KEY: &str = "$bytes";

/// `bytes` as a run holds them.
pub fn value(bytes: &[u8]) -> Value {
    json!({ KEY: base64::engine::general_purpose::STANDARD.encode(bytes) })
}

/// The bytes `v` stands for, when it is a bytes value.
pub fn of(v: &Value) -> Option<Vec<u8>> {
    let m = v.as_object()?;
    if m.len() != 1 {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(m.get(KEY)?.as_str()?)
        .ok()
}

/// A body that is not JSON: a string when it is UTF-8 text, else its bytes.
pub fn text_or_bytes(body: &[u8]) -> Value {
    match std::str::from_utf8(body) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => value(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_text_and_other_bytes_go_through_whole() {
        assert_eq!(text_or_bytes("héllo".as_bytes()), json!("héllo"));
        let png = [0x89, b'P', b'N', b'G', 0xff, 0x00, 0x01];
        let v = text_or_bytes(&png);
        assert_eq!(of(&v).as_deref(), Some(&png[..]));
        assert_eq!(of(&json!({"$bytes": "!!", "x": 1})), None);
        assert_eq!(of(&json!("AAEC")), None);
    }
}
