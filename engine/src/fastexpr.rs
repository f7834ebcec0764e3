//! The common expressions resolved without the JavaScript engine: `$`-paths
//! (`$.Tasks.X.Output`, `$.Invocation.Inputs.default`), `param()`, `param('k')`,
//! `output('X')`, `output()`, `task()`, `task('X')`, each followed by any field
//! accesses (`.a`, `['a']`, `[0]`). The result is what the JavaScript path
//! (expr.rs) gives, but for numbers: a value selected is passed on exactly as it
//! was (JavaScript would round an integer past 2^53, an order id, on its way);
//! whatever this module is not sure of (a field of null or undefined, which
//! JavaScript reports as an error, a name an object inherits such as `length` or
//! `toString`, any other syntax) gives `None`, and the caller evaluates the
//! expression in JavaScript.

use serde_json::{Map, Number, Value};

/// Where an expression starts.
#[derive(Debug, Clone, PartialEq)]
enum Root {
    /// `$`
    Scope,
    /// `param()` / `param('k')`
    Param(Option<String>),
    /// `output()` / `output('X')`
    Output(Option<String>),
    /// `task()` / `task('X')`
    Task(Option<String>),
}

/// A field access: `.name`, `['name']` (a name) or `[0]` (an index, kept as the
/// text JavaScript turns it into).
#[derive(Debug, Clone, PartialEq)]
struct Path {
    root: Root,
    keys: Vec<String>,
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// An ASCII identifier (JavaScript allows more; the rest goes to JavaScript).
    fn ident(&mut self) -> Option<String> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() {
            let c = self.s[self.i];
            let ok = c.is_ascii_alphabetic()
                || c == b'_'
                || c == b'$'
                || (self.i > start && c.is_ascii_digit());
            if !ok {
                break;
            }
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// A string literal without escapes or line breaks.
    fn string(&mut self) -> Option<String> {
        self.ws();
        let quote = *self.s.get(self.i).filter(|c| **c == b'\'' || **c == b'"')?;
        let start = self.i + 1;
        let len = self.s[start..].iter().position(|c| *c == quote)?;
        let body = &self.s[start..start + len];
        if body.iter().any(|c| *c == b'\\' || *c < 0x20) {
            return None;
        }
        let text = std::str::from_utf8(body).ok()?;
        // U+2028 and U+2029 end a line in some engines: not sure, so not here.
        if text.contains(['\u{2028}', '\u{2029}']) {
            return None;
        }
        self.i = start + len + 1;
        Some(text.to_string())
    }

    /// A decimal index without leading zeros (`[01]` is octal in sloppy mode),
    /// small enough to be an array index.
    fn index(&mut self) -> Option<String> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        if digits.is_empty() || digits.len() > 9 || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        // `1.5`, `1e3`, `1n`, `0x1`: a different key, or other syntax.
        if self
            .s
            .get(self.i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'_')
        {
            return None;
        }
        Some(digits.to_string())
    }

    /// `(` [string] `)`
    fn call_arg(&mut self) -> Option<Option<String>> {
        if !self.eat(b'(') {
            return None;
        }
        if self.eat(b')') {
            return Some(None);
        }
        let arg = self.string()?;
        self.eat(b')').then_some(Some(arg))
    }
}

/// Parses an expression's source (the text inside the braces), or None when it is
/// not one of the forms handled here.
fn parse(source: &str) -> Option<Path> {
    let mut p = Parser {
        s: source.as_bytes(),
        i: 0,
    };
    let root = match p.ident()?.as_str() {
        "$" => Root::Scope,
        "param" => Root::Param(p.call_arg()?),
        "output" => Root::Output(p.call_arg()?),
        "task" => Root::Task(p.call_arg()?),
        _ => return None,
    };
    let mut keys = Vec::new();
    loop {
        if p.eat(b'.') {
            keys.push(p.ident()?);
        } else if p.eat(b'[') {
            p.ws();
            let key = if matches!(p.s.get(p.i), Some(b'\'' | b'"')) {
                p.string()?
            } else {
                p.index()?
            };
            if !p.eat(b']') {
                return None;
            }
            keys.push(key);
        } else {
            break;
        }
    }
    p.ws();
    (p.i == p.s.len()).then_some(Path { root, keys })
}

/// Whether the source is one of the forms resolved here (and so valid JavaScript).
pub fn handles(source: &str) -> bool {
    parse(source).is_some()
}

/// The scope an expression sees: `$`, `taskId`, and the current task's inputs as
/// `resolve_inputs` sets them in `$.Tasks[taskId].Inputs` (if it did).
pub struct View<'a> {
    pub scope: &'a Value,
    pub task_id: &'a str,
    pub inputs: Option<&'a Value>,
}

/// A JavaScript value while a path is followed. The three synthetic nodes stand
/// for `$`, `$.Tasks` and `$.Tasks[taskId]` once the current task's inputs were
/// set, without copying the scope.
#[derive(Clone, Copy)]
enum Node<'a> {
    Undefined,
    Json(&'a Value),
    /// `$` with the inputs set.
    Root,
    /// `$.Tasks` with the inputs set.
    Tasks,
    /// `$.Tasks[taskId]` with the inputs set.
    Current,
}

/// Names every object inherits from `Object.prototype` (read through the
/// prototype chain, so a missing field of that name is not `undefined`).
const INHERITED: [&str; 12] = [
    "constructor",
    "toString",
    "toLocaleString",
    "valueOf",
    "hasOwnProperty",
    "isPrototypeOf",
    "propertyIsEnumerable",
    "__proto__",
    "__defineGetter__",
    "__defineSetter__",
    "__lookupGetter__",
    "__lookupSetter__",
];

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `v[key]` on a JSON value; None when not sure (the caller falls back).
fn get_json<'a>(v: &'a Value, key: &str) -> Option<Node<'a>> {
    match v {
        Value::Object(m) => match m.get(key) {
            Some(x) if key != "__proto__" => Some(Node::Json(x)),
            _ if INHERITED.contains(&key) => None,
            _ => Some(Node::Undefined),
        },
        Value::Array(a) => {
            let i: usize = key.parse().ok()?;
            // Only the canonical form of an index names an element.
            if i.to_string() != key || i >= u32::MAX as usize {
                return None;
            }
            Some(a.get(i).map_or(Node::Undefined, Node::Json))
        }
        // A string's `length` or index, a field of null (a TypeError): JavaScript.
        _ => None,
    }
}

/// Stands for the `{}` of `x || {}` (a real null is falsy, so never read there).
static EMPTY: Value = Value::Null;

/// `{}[key]`: only inherited names are found on it.
fn empty_get<'a>(key: &str) -> Option<Node<'a>> {
    (!INHERITED.contains(&key)).then_some(Node::Undefined)
}

impl<'a> View<'a> {
    /// The real value behind a node (None for the synthetic ones).
    fn real_tasks(&self) -> Option<&'a Value> {
        match self.scope {
            Value::Object(m) => m.get("Tasks"),
            _ => None,
        }
    }

    /// `node[key]`.
    fn get(&self, node: Node<'a>, key: &str) -> Option<Node<'a>> {
        match node {
            Node::Undefined => None,
            Node::Json(v) => get_json(v, key),
            Node::Root => {
                if key == "Tasks" {
                    Some(Node::Tasks)
                } else {
                    get_json(self.scope, key)
                }
            }
            Node::Tasks => {
                if key == self.task_id {
                    return Some(Node::Current);
                }
                match self.real_tasks() {
                    Some(t) if truthy(t) => get_json(t, key),
                    // `$.Tasks = {}`
                    _ => empty_get(key),
                }
            }
            Node::Current => {
                if key == "Inputs" {
                    return self.inputs.map(Node::Json);
                }
                match self
                    .real_tasks()
                    .and_then(|t| t.get(self.task_id))
                    .filter(|c| truthy(c))
                {
                    Some(c) => get_json(c, key),
                    None => empty_get(key),
                }
            }
        }
    }

    /// `x || {}` for a node: None when `x` is falsy (read as the empty object).
    fn or_empty(&self, node: Node<'a>) -> Option<Node<'a>> {
        match node {
            Node::Undefined => Some(Node::Json(&EMPTY)),
            Node::Json(v) if !truthy(v) => Some(Node::Json(&EMPTY)),
            Node::Json(v) if !v.is_object() && !v.is_array() => None,
            other => Some(other),
        }
    }

    /// `node[key]` where `node` may be the empty-object stand-in.
    fn get_or_empty(&self, node: Node<'a>, key: &str) -> Option<Node<'a>> {
        match node {
            // The `{}` of `x || {}`.
            Node::Json(Value::Null) => empty_get(key),
            other => self.get(other, key),
        }
    }

    fn root(&self) -> Option<Node<'a>> {
        if !self.scope.is_object() {
            return None;
        }
        if self.inputs.is_none() {
            return Some(Node::Json(self.scope));
        }
        // `if (!$.Tasks) $.Tasks = {}; if (!$.Tasks[taskId]) $.Tasks[taskId] = {};`
        // then `.Inputs = ...`: a truthy non-object on the way is not handled here.
        match self.real_tasks() {
            Some(t) if truthy(t) => {
                if !t.is_object() {
                    return None;
                }
                match t.get(self.task_id) {
                    Some(c) if truthy(c) && !c.is_object() => return None,
                    _ => {}
                }
            }
            _ => {}
        }
        // An inherited name as a task id (`constructor`, `__proto__`) is read
        // through the prototype by `if (!$.Tasks[taskId])`.
        (!INHERITED.contains(&self.task_id)).then_some(Node::Root)
    }

    /// `task(id)`: `($.Tasks || {})[id === undefined ? taskId : id]`.
    fn task(&self, id: Option<&str>) -> Option<Node<'a>> {
        let root = self.root()?;
        let tasks = self.or_empty(self.get(root, "Tasks")?)?;
        self.get_or_empty(tasks, id.unwrap_or(self.task_id))
    }

    fn eval_root(&self, root: &Root) -> Option<Node<'a>> {
        match root {
            Root::Scope => self.root(),
            Root::Task(id) => self.task(id.as_deref()),
            Root::Output(id) => match self.task(id.as_deref())? {
                Node::Undefined => Some(Node::Undefined),
                Node::Json(v) if !truthy(v) => Some(Node::Undefined),
                t => self.get(t, "Output"),
            },
            Root::Param(key) => {
                let root = self.root()?;
                let inv = self.or_empty(self.get(root, "Invocation")?)?;
                let ins = self.or_empty(self.get_or_empty(inv, "Inputs")?)?;
                self.get_or_empty(ins, key.as_deref().unwrap_or("default"))
            }
        }
    }

    /// The JSON value of a node, as `JSON.stringify` then `JSON.parse` give it.
    fn materialize(&self, node: Node<'a>) -> Option<Value> {
        let empty = || Value::Object(Map::new());
        match node {
            Node::Undefined => Some(Value::Null),
            Node::Json(v) => json_like(v),
            Node::Current => {
                let mut c = self
                    .real_tasks()
                    .and_then(|t| t.get(self.task_id))
                    .filter(|c| truthy(c))
                    .cloned()
                    .unwrap_or_else(empty);
                c.as_object_mut()?
                    .insert("Inputs".into(), self.inputs?.clone());
                json_like(&c)
            }
            Node::Tasks => {
                let mut t = self
                    .real_tasks()
                    .filter(|t| truthy(t))
                    .cloned()
                    .unwrap_or_else(empty);
                let current = self.materialize(Node::Current)?;
                t.as_object_mut()?.insert(self.task_id.into(), current);
                json_like(&t)
            }
            Node::Root => {
                let mut r = self.scope.clone();
                let tasks = self.materialize(Node::Tasks)?;
                r.as_object_mut()?.insert("Tasks".into(), tasks);
                json_like(&r)
            }
        }
    }
}

/// Integers JavaScript holds exactly (|n| <= 2^53).
const SAFE: f64 = 9_007_199_254_740_992.0;

/// `v` as it comes back from JavaScript (`JSON.stringify`, then serde), but
/// for its numbers: each as `v` holds it (a fraction to its last bit, an
/// integer past 2^53), where JavaScript would change it; only an integral
/// float prints as the integer it is (`-0` and `1.0` as `0` and `1`).
fn json_like(v: &Value) -> Option<Value> {
    Some(match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() <= SAFE => {
                Value::Number(Number::from(f as i64))
            }
            _ => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(json_like).collect::<Option<_>>()?),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Some((k.clone(), json_like(v)?)))
                .collect::<Option<_>>()?,
        ),
        other => other.clone(),
    })
}

/// Evaluates `source` (the text inside the braces) if it is one of the forms
/// handled here and nothing on its way needs JavaScript; None otherwise.
pub fn eval(source: &str, view: &View<'_>) -> Option<Value> {
    let path = parse(source)?;
    let mut node = view.eval_root(&path.root)?;
    for key in &path.keys {
        node = view.get(node, key)?;
    }
    view.materialize(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_common_forms_only() {
        let p = |s: &str| parse(s).map(|p| (p.root, p.keys));
        assert_eq!(p(" param() "), Some((Root::Param(None), vec![])));
        assert_eq!(
            p("param( 'n' ).a['b c'][0]"),
            Some((
                Root::Param(Some("n".into())),
                vec!["a".into(), "b c".into(), "0".into()]
            ))
        );
        assert_eq!(
            p("$.Tasks.X.Output"),
            Some((
                Root::Scope,
                vec!["Tasks".into(), "X".into(), "Output".into()]
            ))
        );
        assert_eq!(
            p("task().Inputs._item"),
            Some((Root::Task(None), vec!["Inputs".into(), "_item".into()]))
        );
        assert_eq!(
            p("output(\"A\")"),
            Some((Root::Output(Some("A".into())), vec![]))
        );
        for other in [
            "param() + 1",
            "param('a\\'b')",
            "$.Tasks[01]",
            "$.Tasks[1.5]",
            "$.Tasks[1e3]",
            "output(x)",
            "param();",
            "$.a.",
            "$..a",
            "params()",
            "$.Tasks[name]",
            "output('A')()",
            "taskId",
            "$.a?.b",
        ] {
            assert!(parse(other).is_none(), "{other}");
        }
    }
}
