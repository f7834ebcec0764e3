//! Bounds on what a YAML or JSON document may cost before a parser sees it: one
//! linear pre-scan, used by every entry point that parses a user's document.
//!
//! Why a pre-scan: libyaml (under serde_yaml 0.9) re-checks every open flow level
//! (`[` or `{`) at every token, so a document nested N flow levels deep costs
//! O(tokens x N) in its scanner, before serde_yaml's own recursion limit (128) is
//! ever consulted. Measured (release build): a 250 KB `{a: {a: ...` line took
//! 10.9 s, the same nesting over 300 KB of lines 13.4 s, `k: [a, [a, ...` 20 s.
//! The scan below follows libyaml's tokenizer (quoted, plain and block scalars,
//! comments, tags, anchors, the block indentation stack) far enough to know where
//! flow collections open and close, and refuses the document as soon as it nests
//! deeper than [`MAX_DOCUMENT_DEPTH`]. Where libyaml would stop with an error, the
//! scan keeps going: counting more than libyaml would only refuses a document that
//! was invalid anyway, while counting less would let the cost back in.

use std::borrow::Cow;

use thiserror::Error;

/// Deepest nesting of collections in a YAML or JSON document (flow and block
/// levels together), checked before parsing.
pub const MAX_DOCUMENT_DEPTH: usize = 64;

/// A document refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DocumentError {
    #[error(
        "line {line}, column {column}: the document nests deeper than {MAX_DOCUMENT_DEPTH} levels"
    )]
    TooDeep { line: usize, column: usize },
    /// A second YAML document with content, where one was expected.
    #[error("line {line}, column 1: {}", several_reason(*.first))]
    SeveralDocuments { line: usize, first: usize },
}

fn several_reason(first: usize) -> String {
    format!("a second YAML document starts here (the first at line {first}): a workflow file holds one workflow; `fusion spec apply` reads files of several documents")
}

impl DocumentError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            DocumentError::TooDeep { .. } => "document_too_deep",
            DocumentError::SeveralDocuments { .. } => "several_documents",
        }
    }

    /// What is wrong, without where (carried apart by a validation error).
    pub fn reason(&self) -> String {
        match self {
            DocumentError::TooDeep { .. } => {
                format!("the document nests deeper than {MAX_DOCUMENT_DEPTH} levels")
            }
            DocumentError::SeveralDocuments { first, .. } => several_reason(*first),
        }
    }

    /// 1-based line and column of the fault.
    pub fn position(&self) -> (usize, usize) {
        match self {
            DocumentError::TooDeep { line, column } => (*line, *column),
            DocumentError::SeveralDocuments { line, .. } => (*line, 1),
        }
    }
}

/// Refuses a JSON document nested deeper than [`MAX_DOCUMENT_DEPTH`]. Linear.
pub fn check_json(text: &[u8]) -> Result<(), DocumentError> {
    let (mut depth, mut line, mut column) = (0usize, 1usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if b == b'\n' {
            line += 1;
            column = 0;
        } else if b & 0xC0 != 0x80 {
            column += 1;
        }
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DOCUMENT_DEPTH {
                    return Err(DocumentError::TooDeep { line, column });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a JSON document in which an object names a key twice (serde_json
/// keeps the last, silently: `{"name": "a", "name": "b"}` would be `b`). The
/// error says the key, with serde_json's line and column. Its nesting must
/// have been bounded first (`check_json`): this reads it recursively.
pub fn check_unique_keys(text: &[u8]) -> Result<(), serde_json::Error> {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

    struct Unique;

    impl<'de> serde::Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Unique)
        }
    }

    impl<'de> Visitor<'de> for Unique {
        type Value = Unique;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!(
                        "the key {key:?} is given twice in one object"
                    )));
                }
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(text);
    serde::Deserialize::deserialize(&mut de).map(|Unique| ())?;
    de.end()
}

/// Whether a value nests deeper than [`MAX_DOCUMENT_DEPTH`]: what a run may
/// not store of a task's output or inputs (a document it could not read back).
/// Stops at the first level past the bound.
pub fn too_deep(v: &serde_json::Value) -> bool {
    // Whether `v` nests more than `left` levels (a collection is one level
    // more than its deepest element).
    fn deeper(v: &serde_json::Value, left: usize) -> bool {
        match v {
            serde_json::Value::Array(a) => left == 0 || a.iter().any(|c| deeper(c, left - 1)),
            serde_json::Value::Object(m) => left == 0 || m.values().any(|c| deeper(c, left - 1)),
            _ => false,
        }
    }
    deeper(v, MAX_DOCUMENT_DEPTH)
}

/// `text` without the byte-order mark some editors (Windows') put at the
/// start of a UTF-8 file: YAML allows one there, and the parser took it for
/// the start of a key (`missing field output`, the file's first key unseen).
pub fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// A YAML stream's one document with content, as a document of its own, with
/// every line where it was (so that positions in it are the file's): Fission
/// Workflows' parser read a file's first document, so a workflow file may end
/// with `---`, or hold documents of nothing but comments beside its own. Lines
/// of those (their markers, directives) become `#`. A stream of one document
/// comes back as it is; a second document with content is refused at its first
/// line (reading the first alone would drop the second without a word).
///
/// Linear: documents are told apart by their markers (`---` or `...` at the
/// start of a line, which end any scalar in YAML), before anything parses them.
pub fn one_document(source: &str) -> Result<Cow<'_, str>, DocumentError> {
    fn marker(line: &str, m: &str) -> bool {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    }
    fn blank_or_comment(line: &str) -> bool {
        let t = line.trim_matches([' ', '\t', '\r', '\n']);
        t.is_empty() || t.starts_with('#')
    }
    fn content(line: &str) -> bool {
        // A directive (`%YAML`) or a bare marker is not content; a marker
        // with a node on its line (`--- {output: A}`) is.
        !(blank_or_comment(line) || line.starts_with('%') || marker(line, "..."))
            && match line.strip_prefix("---") {
                Some(rest) if marker(line, "---") => !blank_or_comment(rest),
                _ => true,
            }
    }
    if !source.lines().any(|l| marker(l, "---") || marker(l, "...")) {
        return Ok(Cow::Borrowed(source));
    }
    // Each document as [start, end) in lines, and whether it has content.
    let lines: Vec<&str> = source.split_inclusive('\n').collect();
    let mut docs: Vec<(usize, usize, bool)> = Vec::new();
    let (mut start, mut opened, mut full) = (0, false, false);
    for (i, line) in lines.iter().enumerate() {
        if marker(line, "---") {
            if opened || full {
                docs.push((start, i, full));
                (start, full) = (i, false);
            }
            opened = true;
        } else if marker(line, "...") {
            docs.push((start, i + 1, full));
            (start, opened, full) = (i + 1, false, false);
            continue;
        }
        full |= content(line);
    }
    if start < lines.len() || docs.is_empty() {
        docs.push((start, lines.len(), full));
    }
    let mut with_content = docs.iter().filter(|d| d.2);
    let kept = with_content.next().copied();
    if let Some(&(second, ..)) = with_content.next() {
        return Err(DocumentError::SeveralDocuments {
            line: second + 1,
            first: kept.map_or(1, |k| k.0 + 1),
        });
    }
    if docs.len() == 1 {
        return Ok(Cow::Borrowed(source));
    }
    let (from, to) = kept.map_or((0, 0), |k| (k.0, k.1));
    let mut out = String::with_capacity(source.len());
    for (i, line) in lines.iter().enumerate() {
        if (from..to).contains(&i) || blank_or_comment(line) {
            out.push_str(line);
        } else {
            out.push('#');
            out.push_str(&line[line.trim_end_matches(['\r', '\n']).len()..]);
        }
    }
    Ok(Cow::Owned(out))
}

/// Refuses a YAML document (or stream of documents) nested deeper than
/// [`MAX_DOCUMENT_DEPTH`]. Linear in the length of `source`.
pub fn check_yaml(source: &str) -> Result<(), DocumentError> {
    Scanner {
        s: source.as_bytes(),
        i: 0,
        line: 0,
        col: 0,
        flow: 0,
        indents: Vec::new(),
        key_allowed: true,
        key: None,
    }
    .run()
}

/// A cut-down libyaml scanner: it produces no tokens, only the flow level and the
/// block indentation stack.
struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
    /// 0-based line and column (in characters) of `i`.
    line: usize,
    col: usize,
    flow: usize,
    /// libyaml's block indentation stack (`parser.indent` is its top, or -1).
    indents: Vec<usize>,
    /// libyaml's `simple_key_allowed`.
    key_allowed: bool,
    /// Where the pending simple key started (line, column).
    key: Option<(usize, usize)>,
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_anchor_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Characters of a tag's URI (libyaml's `scan_tag_uri`); `,[]` only in `!<...>`.
fn is_uri_char(b: u8, verbatim: bool) -> bool {
    is_anchor_char(b)
        || b";/?:@&=+$.%!~*'()".contains(&b)
        || (verbatim && (b == b',' || b == b'[' || b == b']'))
}

impl Scanner<'_> {
    fn at(&self, k: usize) -> u8 {
        self.s.get(self.i + k).copied().unwrap_or(0)
    }

    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }

    /// Length of the line break at `i + k` (libyaml's IS_BREAK: CR, LF, CRLF, NEL,
    /// LS, PS), or 0.
    fn break_len(&self, k: usize) -> usize {
        match (self.at(k), self.at(k + 1), self.at(k + 2)) {
            (b'\r', b'\n', _) => 2,
            (b'\r', _, _) | (b'\n', _, _) => 1,
            (0xC2, 0x85, _) => 2,
            (0xE2, 0x80, 0xA8) | (0xE2, 0x80, 0xA9) => 3,
            _ => 0,
        }
    }

    fn is_break(&self, k: usize) -> bool {
        self.break_len(k) > 0
    }

    /// libyaml's IS_BLANKZ: blank, break, NUL or the end.
    fn is_blankz(&self, k: usize) -> bool {
        let b = self.at(k);
        b == 0 || is_blank(b) || self.is_break(k)
    }

    fn is_flow_indicator(b: u8) -> bool {
        matches!(b, b',' | b'[' | b']' | b'{' | b'}')
    }

    /// Moves past one character or one line break.
    fn advance(&mut self) {
        let brk = self.break_len(0);
        if brk > 0 {
            self.i += brk;
            self.line += 1;
            self.col = 0;
            return;
        }
        let b = self.at(0);
        let len = match b {
            0xF0..=0xFF => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        self.i = (self.i + len).min(self.s.len());
        self.col += 1;
    }

    fn skip_to_line_end(&mut self) {
        while !self.eof() && !self.is_break(0) {
            self.advance();
        }
    }

    fn indent(&self) -> isize {
        self.indents.last().map_or(-1, |&i| i as isize)
    }

    fn roll(&mut self, col: usize) {
        if self.flow == 0 && self.indent() < col as isize {
            self.indents.push(col);
        }
    }

    fn unroll(&mut self, col: isize) {
        if self.flow == 0 {
            while self.indent() > col {
                self.indents.pop();
            }
        }
    }

    fn check_depth(&self) -> Result<(), DocumentError> {
        if self.flow + self.indents.len() > MAX_DOCUMENT_DEPTH {
            return Err(DocumentError::TooDeep {
                line: self.line + 1,
                column: self.col + 1,
            });
        }
        Ok(())
    }

    fn save_key(&mut self) {
        if self.key_allowed {
            self.key = Some((self.line, self.col));
        }
    }

    fn document_marker(&self) -> bool {
        self.col == 0
            && ((self.at(0) == b'-' && self.at(1) == b'-' && self.at(2) == b'-')
                || (self.at(0) == b'.' && self.at(1) == b'.' && self.at(2) == b'.'))
            && self.is_blankz(3)
    }

    /// libyaml's `scan_to_next_token`: blanks, comments and line breaks.
    fn skip_to_next_token(&mut self) {
        loop {
            if self.col == 0 && self.at(0) == 0xEF && self.at(1) == 0xBB && self.at(2) == 0xBF {
                self.i += 3;
            }
            while self.at(0) == b' '
                || ((self.flow > 0 || !self.key_allowed) && self.at(0) == b'\t')
            {
                self.advance();
            }
            if self.at(0) == b'#' {
                self.skip_to_line_end();
            }
            if !self.is_break(0) {
                return;
            }
            self.advance();
            if self.flow == 0 {
                self.key_allowed = true;
            }
        }
    }

    fn run(mut self) -> Result<(), DocumentError> {
        loop {
            self.skip_to_next_token();
            if self.eof() {
                return Ok(());
            }
            // A simple key lives on one line and within 1024 characters.
            if self
                .key
                .is_some_and(|(l, c)| l != self.line || c + 1024 < self.col)
            {
                self.key = None;
            }
            self.unroll(self.col as isize);
            let c = self.at(0);
            if self.col == 0 && c == b'%' {
                self.skip_to_line_end();
                continue;
            }
            if self.document_marker() {
                self.unroll(-1);
                self.key = None;
                self.key_allowed = false;
                for _ in 0..3 {
                    self.advance();
                }
                continue;
            }
            match c {
                b'[' | b'{' => {
                    self.save_key();
                    self.flow += 1;
                    self.check_depth()?;
                    self.key_allowed = true;
                    self.advance();
                }
                b']' | b'}' => {
                    self.key = None;
                    self.flow = self.flow.saturating_sub(1);
                    self.key_allowed = false;
                    self.advance();
                }
                b',' => {
                    self.key = None;
                    self.key_allowed = true;
                    self.advance();
                }
                b'-' if self.is_blankz(1) => {
                    self.roll(self.col);
                    self.check_depth()?;
                    self.key = None;
                    self.key_allowed = true;
                    self.advance();
                }
                b'?' if self.flow > 0 || self.is_blankz(1) => {
                    self.roll(self.col);
                    self.check_depth()?;
                    self.key = None;
                    self.key_allowed = self.flow == 0;
                    self.advance();
                }
                b':' if self.flow > 0 || self.is_blankz(1) => {
                    let at = self.key.take().map_or(self.col, |(_, c)| c);
                    self.roll(at);
                    self.check_depth()?;
                    self.key_allowed = self.flow == 0;
                    self.advance();
                }
                b'*' | b'&' => {
                    self.save_key();
                    self.key_allowed = false;
                    self.advance();
                    while is_anchor_char(self.at(0)) {
                        self.advance();
                    }
                }
                b'!' => {
                    self.save_key();
                    self.key_allowed = false;
                    self.advance();
                    let verbatim = self.at(0) == b'<';
                    if verbatim {
                        self.advance();
                    }
                    while is_uri_char(self.at(0), verbatim) {
                        self.advance();
                    }
                    if verbatim && self.at(0) == b'>' {
                        self.advance();
                    }
                }
                b'|' | b'>' if self.flow == 0 => {
                    self.key = None;
                    self.key_allowed = true;
                    self.block_scalar();
                }
                b'\'' | b'"' => {
                    self.save_key();
                    self.key_allowed = false;
                    self.quoted(c);
                }
                _ if self.starts_plain() => {
                    self.save_key();
                    self.plain();
                }
                // libyaml stops here with an error; carrying on only counts more.
                _ => self.advance(),
            }
        }
    }

    fn starts_plain(&self) -> bool {
        let c = self.at(0);
        let indicator = self.is_blankz(0) || b"-?:,[]{}#&*!|>'\"%@`".contains(&c);
        !indicator
            || (c == b'-' && !is_blank(self.at(1)))
            || (self.flow == 0 && (c == b'?' || c == b':') && !self.is_blankz(1))
    }

    /// libyaml's `scan_flow_scalar`: to the closing quote, across lines.
    fn quoted(&mut self, quote: u8) {
        self.advance();
        loop {
            if self.eof() || self.document_marker() {
                return;
            }
            let c = self.at(0);
            if quote == b'\'' && c == b'\'' {
                self.advance();
                if self.at(0) != b'\'' {
                    return;
                }
            } else if quote == b'"' && c == b'\\' {
                self.advance();
            } else if c == quote {
                self.advance();
                return;
            }
            self.advance();
        }
    }

    /// libyaml's `scan_plain_scalar`.
    fn plain(&mut self) {
        let indent = self.indent() + 1;
        let mut leading_blanks = false;
        'scalar: loop {
            if self.document_marker() || self.at(0) == b'#' {
                break;
            }
            while !self.is_blankz(0) {
                let c = self.at(0);
                if self.flow > 0 && c == b':' && b",?[]{}".contains(&self.at(1)) {
                    break 'scalar;
                }
                if (c == b':' && self.is_blankz(1)) || (self.flow > 0 && Self::is_flow_indicator(c))
                {
                    break;
                }
                self.advance();
                leading_blanks = false;
            }
            if !(is_blank(self.at(0)) || self.is_break(0)) {
                break;
            }
            while is_blank(self.at(0)) || self.is_break(0) {
                if is_blank(self.at(0)) {
                    if leading_blanks && (self.col as isize) < indent && self.at(0) == b'\t' {
                        break 'scalar;
                    }
                } else {
                    leading_blanks = true;
                }
                self.advance();
            }
            if self.flow == 0 && (self.col as isize) < indent {
                break;
            }
        }
        self.key_allowed = leading_blanks;
    }

    /// libyaml's `scan_block_scalar`: the header, then every line indented at
    /// least as much as the content.
    fn block_scalar(&mut self) {
        self.advance();
        let mut increment = 0usize;
        for _ in 0..2 {
            match self.at(0) {
                b'+' | b'-' => self.advance(),
                d @ b'1'..=b'9' => {
                    increment = (d - b'0') as usize;
                    self.advance();
                }
                _ => {}
            }
        }
        while is_blank(self.at(0)) {
            self.advance();
        }
        if self.at(0) == b'#' {
            self.skip_to_line_end();
        }
        if !self.is_break(0) {
            // An error in libyaml (or the end): scan what follows as tokens.
            return;
        }
        self.advance();
        let parent = self.indent();
        let mut indent = match increment {
            0 => 0,
            n if parent >= 0 => parent as usize + n,
            n => n,
        };
        let mut max_indent = 0;
        if !self.block_breaks(indent, &mut max_indent) {
            return;
        }
        if indent == 0 {
            indent = max_indent.max((parent + 1) as usize).max(1);
        }
        while self.col == indent && !self.eof() {
            self.skip_to_line_end();
            if self.eof() {
                return;
            }
            self.advance();
            if !self.block_breaks(indent, &mut max_indent) {
                return;
            }
        }
    }

    /// libyaml's `scan_block_scalar_breaks`: indentation and empty lines. False
    /// where libyaml stops with an error.
    fn block_breaks(&mut self, indent: usize, max_indent: &mut usize) -> bool {
        loop {
            while (indent == 0 || self.col < indent) && self.at(0) == b' ' {
                self.advance();
            }
            *max_indent = (*max_indent).max(self.col);
            if (indent == 0 || self.col < indent) && self.at(0) == b'\t' {
                return false;
            }
            if !self.is_break(0) {
                return true;
            }
            self.advance();
        }
    }
}

/// serde's names of number types in what it expected (`expected u32`) in
/// the words of whoever wrote the document.
pub fn plain_numbers(text: &str) -> String {
    let mut out = text.to_string();
    for (rust, words) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number from 0"),
        ("expected usize", "expected a whole number from 0"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
    ] {
        if let Some(at) = out.find(rust) {
            let end = at + rust.len();
            // Not a prefix of a longer name (`u32` in `u320`).
            if !out[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                out.replace_range(at..end, words);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_given_twice_in_one_object_is_refused_with_its_place() {
        let e = super::check_unique_keys(b"{\"a\": 1,\n \"b\": {\"c\": 1, \"c\": 2}}").unwrap_err();
        assert!(
            e.to_string().contains("the key \"c\" is given twice"),
            "{e}"
        );
        assert_eq!(e.line(), 2);
        // The same key in two objects, escapes and all the kinds of values are fine.
        super::check_unique_keys(
            br#"{"a": {"k": 1}, "b": {"k": [1, -2, 3.5, "x\"y", null, true]}, "c": {}}"#,
        )
        .unwrap();
        assert!(super::check_unique_keys(b"{} x").is_err());
    }

    use super::*;

    fn nested(open: &str, inner: &str, close: &str, n: usize) -> String {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    }

    #[test]
    fn refuses_deep_flow_nesting() {
        for doc in [
            nested("[", "", "]", 100_000),
            nested("{a: ", "1", "}", 50_000),
            nested("{a:\n", "1", "}\n", 50_000),
            format!("k: {}", nested("[a, ", "1", "]", 50_000)),
            format!("a:\n  b:\n    - {}\n", nested("[", "", "]", 65)),
        ] {
            let e = check_yaml(&doc).unwrap_err();
            assert_eq!(e.code(), "document_too_deep");
        }
    }

    /// A value is as deep as the JSON text `check_json` counts.
    #[test]
    fn a_value_is_too_deep_where_its_text_would_be() {
        for n in [1, MAX_DOCUMENT_DEPTH, MAX_DOCUMENT_DEPTH + 1, 120] {
            for (open, close) in [("[", "]"), ("{\"a\": ", "}")] {
                let text = nested(open, "1", close, n);
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(too_deep(&v), check_json(text.as_bytes()).is_err(), "{n}");
            }
        }
        assert!(!too_deep(&serde_json::json!([[], {}, 1, "x"])));
    }

    #[test]
    fn refuses_deep_json() {
        let e = check_json(nested("[", "", "]", 100_000).as_bytes()).unwrap_err();
        assert_eq!(e.position(), (1, MAX_DOCUMENT_DEPTH + 1));
        assert!(check_json(nested("[", "", "]", MAX_DOCUMENT_DEPTH).as_bytes()).is_ok());
        // Brackets inside strings are text.
        let text = format!("[\"{}\"]", "[".repeat(1000));
        assert!(check_json(text.as_bytes()).is_ok());
        let escaped = format!("[\"\\\"{}\"]", "[".repeat(1000));
        assert!(check_json(escaped.as_bytes()).is_ok());
    }

    #[test]
    fn many_shallow_siblings_pass() {
        let one = nested("[", "1", "]", 50);
        let doc: String = (0..2000).map(|i| format!("k{i}: {one}\n")).collect();
        assert!(check_yaml(&doc).is_ok());
        assert!(check_yaml(&format!("[{}]", vec![one; 2000].join(","))).is_ok());
    }

    #[test]
    fn one_document_keeps_its_lines_and_drops_empty_ones() {
        let one = "output: A\ntasks: {}\n";
        for same in [one, "--- \noutput: A\n", "%YAML 1.2\n---\noutput: A\n...\n"] {
            assert!(matches!(one_document(same), Ok(Cow::Borrowed(t)) if t == same));
        }
        for (stream, kept) in [
            (format!("{one}---\n"), format!("{one}#\n")),
            (format!("{one}---\r\n"), format!("{one}#\r\n")),
            (
                format!("---\n{one}--- # x\n# y\n...\n"),
                format!("---\n{one}#\n# y\n#\n"),
            ),
            (
                format!("# c\n---\n---\n{one}"),
                format!("# c\n#\n---\n{one}"),
            ),
            (format!("{one}...\n---"), format!("{one}...\n#")),
            (
                "--- {output: A}\n---\n".into(),
                "--- {output: A}\n#\n".into(),
            ),
        ] {
            let got = one_document(&stream).unwrap();
            assert_eq!(got, kept, "{stream:?}");
            assert_eq!(got.lines().count(), stream.lines().count());
            let v: serde_yaml::Value = serde_yaml::from_str(&got).expect(&got);
            assert!(v["output"].is_string(), "{got:?}");
        }
        // A marker ends a block scalar, as in YAML; `---x` is no marker.
        assert!(one_document("a: |\n  x\n---x\n").is_ok());
        for (stream, line) in [
            ("a: 1\n---\nb: 2\n", 2),
            ("a: 1\n...\nb: 2\n", 3),
            ("# c\n---\n---\na: 1\n--- 2\n", 5),
            ("a: |\n  x\n---\n  y\n", 3),
        ] {
            let e = one_document(stream).unwrap_err();
            assert_eq!(
                (e.code(), e.position()),
                ("several_documents", (line, 1)),
                "{stream:?}"
            );
        }
    }

    #[test]
    fn brackets_in_text_are_not_nesting() {
        let deep = "[".repeat(200);
        for doc in [
            format!("a: \"{deep}\"\n"),
            format!("a: '{deep}'\n"),
            format!("a: x{deep}\n"),
            format!("a: x\n  {deep}\n"),
            format!("a: 1 # {deep}\n"),
            format!("a: |\n  {deep}\n  {deep}\nb: 1\n"),
            format!("- >-\n    {deep}\n- 2\n"),
            format!("a: !<t{deep}>\n"),
            format!("a: [\"{deep}\", '{deep}', x]\n"),
            format!("a: {{k: \"{deep}\\\"{deep}\"}}\n"),
        ] {
            assert!(check_yaml(&doc).is_ok(), "{doc}");
            // libyaml agrees that it is text: deeper than 128 levels would fail.
            serde_yaml::from_str::<serde_yaml::Value>(&doc).expect(&doc);
        }
    }

    /// Places where a careless scanner would take text for a string or a
    /// comment and miss the nesting libyaml sees after it.
    #[test]
    fn text_cannot_hide_nesting() {
        let deep = nested("[", "", "]", 200);
        for doc in [
            // A quote inside a plain scalar is text, not a string's start.
            format!("a: x\"\nb: {deep}\nc: \"\n"),
            format!("[a \",\n{deep}\n]\n"),
            // The line after a plain scalar that is less indented starts afresh.
            format!("a:\n  b: x\nc: \"y\"\nd: {deep}\n"),
            // `#` inside a plain scalar is not a comment.
            format!("[a#b, {deep}]\n"),
            // A NEL ends a comment.
            format!("# c\u{85}{deep}\n"),
            // A block scalar ends at a less indented line.
            format!("a: |\n  text\nb: {deep}\n"),
            // A tag takes `'` but not `[`.
            format!("a: !x'\n  {deep}\n"),
        ] {
            assert!(check_yaml(&doc).is_err(), "{doc:?}");
            // libyaml does see the nesting (past serde_yaml's limit of 128).
            let e = serde_yaml::from_str::<serde_yaml::Value>(&doc).unwrap_err();
            assert!(e.to_string().contains("recursion limit"), "{doc:?}: {e}");
        }
    }

    #[test]
    fn ordinary_workflows_pass() {
        let yaml = "apiVersion: 1\noutput: B\ntasks:\n  A:\n    run: fortune\n  B:\n    run: whalesay\n    inputs: \"{ $.Tasks.A.Output }\"\n    requires: [A]\n  C:\n    run: javascript\n    inputs:\n      expr: |\n        function f() { if (x) { return [1, [2]]; } }\n";
        assert!(check_yaml(yaml).is_ok());
    }

    /// Whether serde_yaml's recursion limit tripped inside the nesting that starts
    /// at byte `tail` of the document. The limit also trips on an alias cycle
    /// (`&a\nk: *a` anchors the mapping that holds the alias), which is no
    /// nesting libyaml scanned: the alias then expands its own anchor 128 times,
    /// and the error points at that anchored node, before `tail`.
    fn nesting_tripped(e: &serde_yaml::Error, tail: usize) -> bool {
        e.to_string().contains("recursion limit")
            && e.location().is_some_and(|at| at.index() >= tail)
    }

    /// A self-referential alias trips serde_yaml's recursion limit with no
    /// nesting at all; the oracle of `never_counts_less_than_libyaml` must not
    /// take that for nesting the pre-scan missed. In the first two documents
    /// libyaml sees no nesting: `a[[[...` at column 0 is a plain scalar (flow
    /// indicators are text in a block plain scalar), and in the second `%` cannot
    /// start a token, so libyaml's scanner stops right after the alias `*a`. In
    /// the third the brackets are nesting, but the cycle trips the limit first.
    #[test]
    fn alias_cycles_are_not_nesting() {
        let deep = nested("[", "", "]", 130);
        for prefix in ["&a  \n'': *a\na", "&a  \n'': *a%Y\na", "&a\nk: *a\n"] {
            let doc = format!("{prefix}{deep}\n");
            let e = serde_yaml::from_str::<serde_yaml::Value>(&doc).unwrap_err();
            assert!(e.to_string().contains("recursion limit"), "{doc:?}: {e}");
            assert!(!nesting_tripped(&e, prefix.len()), "{doc:?}: {e}");
        }
        assert!(check_yaml(&format!("&a  \n'': *a\na{deep}\n")).is_ok());
        // Real nesting trips the limit inside it, even after an anchor and alias.
        let doc = format!("k: &a x\nl: *a\nj: {deep}\n");
        let e = serde_yaml::from_str::<serde_yaml::Value>(&doc).unwrap_err();
        assert!(
            nesting_tripped(&e, doc.len() - deep.len() - 1),
            "{doc:?}: {e}"
        );
        assert!(check_yaml(&doc).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// Differential check against libyaml itself: whatever text comes first,
        /// when serde_yaml finds the 130-level nesting that follows it (its
        /// recursion limit of 128 trips), the pre-scan refused the document too.
        #[test]
        fn never_counts_less_than_libyaml(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "a", "b c", " ", "  ", "\n", "\n  ", "\"", "'", "''", "\\", "#", " #", ":", ": ",
                "- ", "? ", "[", "]", "{", "}", ",", "|", ">-", "!t ", "!x'", "!<a[>", "&a ",
                "*a", "\t", "x\"y", "\u{85}", "---\n", "...\n", "%Y\n", "k: ", "- k: ",
            ]), 0..24)
        ) {
            let prefix = parts.concat();
            let doc = format!("{prefix}{}{}\n", "[".repeat(130), "]".repeat(130));
            if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(&doc) {
                if nesting_tripped(&e, prefix.len()) {
                    proptest::prop_assert!(check_yaml(&doc).is_err(), "{:?}", doc);
                }
            }
        }
    }
}
