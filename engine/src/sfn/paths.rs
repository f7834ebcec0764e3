//! JSONPath shaping of a state's input and output, as RFC-0022 defines it, in
//! one pinned dialect: RFC 9535, through the `serde_json_path` crate.
//!
//! - `inputPath` selects the state's input from the document it receives
//!   (unset: the whole document; no match: `null`).
//! - `resultPath` writes the state's result into its input document (unset:
//!   the result replaces the document; `null`: the result is discarded; `$`:
//!   the whole document). Missing parent objects are created; a write that
//!   cannot be made (a wildcard, filter, slice, union or `..`, an index past an
//!   array's end, a step through a string or number) is a
//!   `Fission.InvalidPath` step error.
//! - `outputPath` selects what the state hands on (unset: everything; no
//!   match: `null`).
//!
//! A read that matches several nodes takes the first; a matched `null` is a
//! match.

use serde_json::{Map, Value};
use serde_json_path::JsonPath;
use thiserror::Error;

use super::spec::{ResultPath, WorkflowState};

/// The step error a failed shaping is recorded as.
pub const INVALID_PATH: &str = "Fission.InvalidPath";

/// Shaping that could not be done; the engine records it as a step failure
/// with `errorType` [`INVALID_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShapeError {
    #[error("{field} {path:?} is not a valid JSONPath: {reason}")]
    Syntax {
        field: &'static str,
        path: String,
        reason: String,
    },
    #[error("resultPath {path:?}: cannot write the result: {reason}")]
    Unwritable { path: String, reason: String },
}

impl ShapeError {
    /// The `errorType` of the step failure.
    pub fn error_type(&self) -> &'static str {
        INVALID_PATH
    }
}

/// Parses a workflow JSONPath (RFC 9535; it starts with `$`).
pub fn parse_path(text: &str) -> Result<JsonPath, String> {
    JsonPath::parse(text).map_err(|e| e.to_string())
}

/// The first node `path` selects in `doc`, or `null` when none matches.
pub fn select(path: &JsonPath, doc: &Value) -> Value {
    path.query(doc).first().cloned().unwrap_or(Value::Null)
}

fn read(field: &'static str, path: Option<&str>, doc: &Value) -> Result<Value, ShapeError> {
    match path {
        None => Ok(doc.clone()),
        Some(p) => {
            let q = parse_path(p).map_err(|reason| ShapeError::Syntax {
                field,
                path: p.to_string(),
                reason,
            })?;
            Ok(select(&q, doc))
        }
    }
}

/// A state's input: `inputPath` applied to the document it receives.
pub fn apply_input_path(input_path: Option<&str>, doc: &Value) -> Result<Value, ShapeError> {
    read("inputPath", input_path, doc)
}

/// What a state hands on: `outputPath` applied to its shaped result.
pub fn apply_output_path(output_path: Option<&str>, doc: &Value) -> Result<Value, ShapeError> {
    read("outputPath", output_path, doc)
}

/// The state's input document with its result placed per `resultPath`.
pub fn apply_result_path(
    result_path: &ResultPath,
    input: &Value,
    result: Value,
) -> Result<Value, ShapeError> {
    match result_path {
        ResultPath::Replace => Ok(result),
        ResultPath::Discard => Ok(input.clone()),
        ResultPath::At(p) => write_at(p, input, result),
    }
}

/// Both output steps of a state: `resultPath`, then `outputPath`. `input` is
/// the document the state received (before `inputPath`), as in Step
/// Functions.
pub fn shape_output(
    state: &WorkflowState,
    input: &Value,
    result: Value,
) -> Result<Value, ShapeError> {
    let merged = apply_result_path(&state.result_path, input, result)?;
    apply_output_path(state.output_path.as_deref(), &merged)
}

/// One step of a path that names a single place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    Name(String),
    Index(i64),
}

/// `doc` with `value` written at `path`, which must name one place (RFC 9535's
/// singular query: names and indexes only). `$` replaces the whole document.
pub fn write_at(path: &str, doc: &Value, value: Value) -> Result<Value, ShapeError> {
    let unwritable = |reason: String| ShapeError::Unwritable {
        path: path.to_string(),
        reason,
    };
    parse_path(path).map_err(|reason| ShapeError::Syntax {
        field: "resultPath",
        path: path.to_string(),
        reason,
    })?;
    let places = singular_places(path).ok_or_else(|| {
        unwritable(
            "it must name one place (only names and indexes; no wildcard, filter, slice, union or `..`)"
                .to_string(),
        )
    })?;
    let mut out = doc.clone();
    let mut here = &mut out;
    for place in &places {
        if here.is_null() {
            *here = Value::Object(Map::new());
        }
        here = match (place, here) {
            (Place::Name(name), Value::Object(map)) => {
                map.entry(name.clone()).or_insert(Value::Null)
            }
            (Place::Index(i), Value::Array(items)) => {
                let len = items.len();
                let at = if *i < 0 {
                    i64::try_from(len)
                        .ok()
                        .and_then(|l| usize::try_from(l + i).ok())
                } else {
                    usize::try_from(*i).ok()
                };
                match at.filter(|a| *a < len) {
                    Some(a) => &mut items[a],
                    None => {
                        return Err(unwritable(format!(
                            "index {i} is outside the array (length {len})"
                        )))
                    }
                }
            }
            (Place::Name(name), other) => {
                return Err(unwritable(format!(
                    "cannot set member {name:?} of {}",
                    kind(other)
                )))
            }
            (Place::Index(i), other) => {
                return Err(unwritable(format!(
                    "cannot set index {i} of {}",
                    kind(other)
                )))
            }
        };
    }
    *here = value;
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `path` (already known to parse) names at most one place.
pub(crate) fn is_singular(path: &str) -> bool {
    singular_places(path).is_some()
}

/// The steps of a singular query (`$`, `.name`, `['name']`, `["name"]`,
/// `[3]`, `[-1]`), or None when the path can select several nodes. The caller
/// has checked the path parses under RFC 9535, so only the singular subset
/// needs recognizing here.
pub(crate) fn singular_places(path: &str) -> Option<Vec<Place>> {
    let mut rest = path.strip_prefix('$')?;
    let mut out = Vec::new();
    let ws = |s: &str| s.trim_start_matches([' ', '\t', '\n', '\r']).to_string();
    loop {
        let r = ws(rest);
        if r.is_empty() {
            return Some(out);
        }
        if let Some(after) = r.strip_prefix('.') {
            if after.starts_with('.') || after.starts_with('*') {
                return None;
            }
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || !c.is_ascii()))
                .unwrap_or(after.len());
            if end == 0 {
                return None;
            }
            out.push(Place::Name(after[..end].to_string()));
            let consumed = r.len() - after.len() + end;
            rest = &rest[rest.len() - r.len() + consumed..];
            continue;
        }
        let inner = r.strip_prefix('[')?;
        let inner_ws = ws(inner);
        let (place, after) = if let Some(q) = inner_ws.strip_prefix(['\'', '"']) {
            let quote = inner_ws.chars().next()?;
            let (name, used) = quoted(q, quote)?;
            (Place::Name(name), &q[used..])
        } else {
            let end = inner_ws
                .find(|c: char| !(c.is_ascii_digit() || c == '-'))
                .unwrap_or(inner_ws.len());
            let i: i64 = inner_ws[..end].parse().ok()?;
            (Place::Index(i), &inner_ws[end..])
        };
        let after = ws(after);
        let after = after.strip_prefix(']')?;
        out.push(place);
        // Re-slice `rest` to what follows the `]`.
        rest = &rest[rest.len() - after.len()..];
    }
}

/// Decodes a quoted name whose opening quote is already consumed; returns it
/// and the bytes used, closing quote included. RFC 9535's escapes are JSON's,
/// plus `\'` in single-quoted names.
fn quoted(s: &str, quote: char) -> Option<(String, usize)> {
    let mut json = String::from("\"");
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    '\'' => json.push('\''),
                    other => {
                        json.push('\\');
                        json.push(other);
                        if other == 'u' {
                            for _ in 0..4 {
                                json.push(chars.next()?.1);
                            }
                        }
                    }
                }
            }
            c if c == quote => {
                json.push('"');
                let name: String = serde_json::from_str(&json).ok()?;
                return Some((name, i + c.len_utf8()));
            }
            '"' => json.push_str("\\\""),
            c => json.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn at(p: &str) -> ResultPath {
        ResultPath::At(p.to_string())
    }

    #[test]
    fn input_path_selects_and_no_match_is_null() {
        let doc = json!({"order": {"id": 7, "items": [1, 2]}, "n": null});
        assert_eq!(apply_input_path(None, &doc).unwrap(), doc);
        assert_eq!(apply_input_path(Some("$"), &doc).unwrap(), doc);
        assert_eq!(
            apply_input_path(Some("$.order.id"), &doc).unwrap(),
            json!(7)
        );
        assert_eq!(
            apply_input_path(Some("$.order.items[1]"), &doc).unwrap(),
            json!(2)
        );
        assert_eq!(
            apply_input_path(Some("$.missing"), &doc).unwrap(),
            Value::Null
        );
        assert_eq!(apply_input_path(Some("$.n"), &doc).unwrap(), Value::Null);
    }

    #[test]
    fn a_read_matching_several_nodes_takes_the_first() {
        let doc = json!({"items": [{"x": 1}, {"x": 2}]});
        assert_eq!(
            apply_input_path(Some("$.items[*].x"), &doc).unwrap(),
            json!(1)
        );
    }

    #[test]
    fn the_dialect_is_rfc_9535_with_its_functions() {
        let doc = json!({"items": [
            {"id": "a1", "tags": ["x"]},
            {"id": "b2", "tags": ["x", "y"]}
        ]});
        let read = |p: &str| apply_input_path(Some(p), &doc).unwrap();
        assert_eq!(read("$.items[?length(@.tags) > 1].id"), json!("b2"));
        assert_eq!(read("$.items[?match(@.id, 'b[0-9]')].id"), json!("b2"));
        assert_eq!(read("$.items[-1].tags[0]"), json!("x"));
        assert_eq!(read("$['items'][0]['id']"), json!("a1"));
        // Not RFC 9535: relative paths, and JavaScript-style filters.
        assert!(apply_input_path(Some("@.items"), &doc).is_err());
        assert!(apply_input_path(Some("$.items[?(@.id == 'a1')]"), &doc).is_ok());
        assert!(apply_input_path(Some("$.items[(@.length-1)]"), &doc).is_err());
    }

    #[test]
    fn output_path_selects_and_no_match_is_null() {
        let doc = json!({"a": {"b": true}});
        assert_eq!(apply_output_path(Some("$.a.b"), &doc).unwrap(), json!(true));
        assert_eq!(apply_output_path(Some("$.zz"), &doc).unwrap(), Value::Null);
        assert_eq!(apply_output_path(None, &doc).unwrap(), doc);
    }

    #[test]
    fn a_path_that_does_not_parse_is_invalid_path() {
        let e = apply_input_path(Some("order.id"), &json!({})).unwrap_err();
        assert!(
            matches!(
                e,
                ShapeError::Syntax {
                    field: "inputPath",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.error_type(), "Fission.InvalidPath");
        let e = apply_output_path(Some("$["), &json!({})).unwrap_err();
        assert_eq!(e.error_type(), "Fission.InvalidPath");
    }

    #[test]
    fn result_path_unset_replaces_null_discards_dollar_replaces() {
        let input = json!({"a": 1});
        let r = json!({"ok": true});
        assert_eq!(
            apply_result_path(&ResultPath::Replace, &input, r.clone()).unwrap(),
            r
        );
        assert_eq!(
            apply_result_path(&ResultPath::Discard, &input, r.clone()).unwrap(),
            input
        );
        assert_eq!(apply_result_path(&at("$"), &input, r.clone()).unwrap(), r);
    }

    #[test]
    fn result_path_writes_and_creates_missing_parents() {
        let input = json!({"order": {"id": 7}});
        let out = apply_result_path(&at("$.charge"), &input, json!("paid")).unwrap();
        assert_eq!(out, json!({"order": {"id": 7}, "charge": "paid"}));
        let out = apply_result_path(&at("$.a.b['c d']"), &input, json!(1)).unwrap();
        assert_eq!(out, json!({"order": {"id": 7}, "a": {"b": {"c d": 1}}}));
        let out = apply_result_path(&at("$.order.id"), &input, json!(8)).unwrap();
        assert_eq!(out, json!({"order": {"id": 8}}));
        // A null document or parent becomes an object.
        let out = apply_result_path(&at("$.x.y"), &Value::Null, json!(1)).unwrap();
        assert_eq!(out, json!({"x": {"y": 1}}));
    }

    #[test]
    fn result_path_writes_array_items_by_index() {
        let input = json!({"xs": [1, 2, 3]});
        let out = apply_result_path(&at("$.xs[1]"), &input, json!(9)).unwrap();
        assert_eq!(out, json!({"xs": [1, 9, 3]}));
        let out = apply_result_path(&at("$.xs[-1]"), &input, json!(9)).unwrap();
        assert_eq!(out, json!({"xs": [1, 2, 9]}));
    }

    #[test]
    fn result_path_writes_that_cannot_be_made_are_invalid_path() {
        let input = json!({"s": "text", "xs": [1]});
        for p in [
            "$.s.inner",    // through a string
            "$.xs[5]",      // past the end
            "$.xs.name",    // a name on an array
            "$.items[*]",   // wildcard
            "$..x",         // descendant
            "$.xs[0:1]",    // slice
            "$.xs[?@ > 0]", // filter
            "$['a','b']",   // union
        ] {
            let e = apply_result_path(&at(p), &input, json!(1)).unwrap_err();
            assert!(matches!(e, ShapeError::Unwritable { .. }), "{p}: {e}");
            assert_eq!(e.error_type(), "Fission.InvalidPath");
        }
        let e = apply_result_path(&at("not a path"), &input, json!(1)).unwrap_err();
        assert!(matches!(e, ShapeError::Syntax { .. }));
    }

    #[test]
    fn singular_places_decode_names_and_escapes() {
        assert_eq!(singular_places("$"), Some(vec![]));
        assert_eq!(
            singular_places(r#"$.a["b\"c"]['d\'e'][ 2 ]"#),
            Some(vec![
                Place::Name("a".into()),
                Place::Name("b\"c".into()),
                Place::Name("d'e".into()),
                Place::Index(2),
            ])
        );
        assert_eq!(
            singular_places(r#"$['\u00e9']"#),
            Some(vec![Place::Name("é".into())])
        );
        assert_eq!(singular_places("$.a[*]"), None);
        assert_eq!(singular_places("$.*"), None);
    }

    #[test]
    fn shape_output_applies_result_path_then_output_path() {
        let mut state: WorkflowState = serde_json::from_value(json!({
            "type": "Task", "function": {"name": "f"}, "end": true,
            "resultPath": "$.r", "outputPath": "$.r.v"
        }))
        .unwrap();
        let out = shape_output(&state, &json!({"in": 1}), json!({"v": 5})).unwrap();
        assert_eq!(out, json!(5));
        state.output_path = None;
        let out = shape_output(&state, &json!({"in": 1}), json!({"v": 5})).unwrap();
        assert_eq!(out, json!({"in": 1, "r": {"v": 5}}));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_path() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            "[a-c]{1,2}".prop_map(|s| format!(".{s}")),
            "-?[0-9]{1,2}".prop_map(|s| format!("[{s}]")),
            "[a-c ']{0,3}".prop_map(|s| format!("['{s}']")),
            Just("[*]".to_string()),
            Just("..a".to_string()),
            Just("[0:2]".to_string()),
            Just("[?@.a]".to_string()),
            "[\\[\\]$.*'?@a0-9 -]{1,4}",
        ];
        prop::collection::vec(segment, 0..5).prop_map(|s| format!("${}", s.concat()))
    }

    proptest! {
        #[test]
        fn shaping_never_panics(doc in arb_json(), result in arb_json(), path in arb_path(), raw in ".{0,12}") {
            for p in [path.as_str(), raw.as_str()] {
                let _ = apply_input_path(Some(p), &doc);
                let _ = apply_output_path(Some(p), &doc);
                let _ = apply_result_path(&ResultPath::At(p.to_string()), &doc, result.clone());
                let _ = singular_places(p);
            }
        }

        #[test]
        fn a_written_result_reads_back(doc in arb_json(), result in arb_json(), path in arb_path()) {
            if let Ok(out) = write_at(&path, &doc, result.clone()) {
                let q = parse_path(&path).unwrap();
                prop_assert_eq!(select(&q, &out), result);
            }
        }
    }
}
