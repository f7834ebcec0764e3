//! Fission Workflows' built-in functions, evaluated in-process on a task's resolved
//! inputs. Control flow built-ins (`if`, `switch`, `foreach`, `repeat`, `while`)
//! answer with a task or workflow spec that the driver runs as a dynamic
//! sub-workflow; `sleep`, `http` and `callback` (wait for an outside POST to a
//! one-time URL) are performed by the driver.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::dag::TaskGraph;
use crate::spec::{is_task_spec, is_workflow_spec, parse_duration, TaskSpec, WorkflowSpec};

/// Names of the built-ins.
pub const BUILTINS: &[&str] = &[
    "noop",
    // Fission Workflows' alias of noop.
    "nop",
    "compose",
    "if",
    "switch",
    "foreach",
    "repeat",
    "while",
    "sleep",
    "fail",
    "javascript",
    "http",
    "callback",
];

pub fn is_builtin(name: &str) -> bool {
    BUILTINS.contains(&name)
}

/// The inputs built-in `name` reads, when it reads only some (`compose`
/// merges whatever it is given).
pub fn inputs_of(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "noop" | "nop" => &["default"],
        "if" => &["if", "then", "else"],
        "switch" => &["switch", "cases", "default"],
        "foreach" => &["foreach", "do", "collect", "sequential", "concurrency"],
        "repeat" => &["times", "do"],
        "while" => &["expr", "limit", "delay", "do"],
        "sleep" => &["default", "duration"],
        "fail" => &["default", "message"],
        "javascript" => &["expr", "args"],
        "http" => &[
            "url",
            "default",
            "method",
            "headers",
            "body",
            "content-type",
        ],
        "callback" => &["notify", "body"],
        _ => return None,
    })
}

/// An outgoing request of the `http` built-in.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

/// What a built-in asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Its output: data, a value shaped like a task or workflow spec too.
    Output(Value),
    /// A workflow spec written in the workflow (an `if`'s branch, a `noop`'s
    /// input), or a sub-workflow a loop made from the `do` written there
    /// (`foreach`, `repeat`, `while`): run as a dynamic sub-workflow.
    Tasks(Value),
    /// A task spec written in the workflow, in the input `name` (`then`,
    /// `else`, `action`, `input`): run as a sub-workflow of that one task,
    /// named so (`Check/then`).
    Task {
        name: &'static str,
        spec: Value,
    },
    /// Succeed with no output after this long (durable timer).
    Sleep(Duration),
    Http(HttpRequest),
    /// Fail the task (not retried).
    Fail(String),
    /// Fail the task (not retried): its inputs are not what it takes (a `sleep`
    /// that is not a duration, a `foreach` that is not a list). When those came
    /// from the caller's input, the caller is told so (422).
    Invalid(String),
    /// Wait for an outside completion of a one-time callback token, first
    /// handing its URL to the function `notify` (if given).
    Callback {
        notify: Option<String>,
    },
}

type Inputs = BTreeMap<String, Value>;

/// Most iterations of `repeat`: its tasks are all created at once, so a larger
/// (or mistyped) count would exhaust memory instead of failing the task.
pub const MAX_REPEAT: usize = 10_000;

/// Most iterations of `while` (its `limit`, which may come from the caller):
/// a loop keeps every iteration's tasks in its run.
pub const MAX_WHILE: usize = 10_000;

fn default_input(inputs: &Inputs) -> Value {
    inputs.get("default").cloned().unwrap_or(Value::Null)
}

/// A yes-or-no input (`if`'s condition, `foreach`'s `collect` and
/// `sequential`): a boolean, as Fission Workflows took it, or one of YAML
/// 1.1's words for one (`yes`, `no`, `on`, `off`, `y`, `n`), which Fission
/// Workflows' YAML parser read as booleans and Fusion's (YAML 1.2) reads as
/// text. Anything else is refused (`None`), not taken for true.
pub fn flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.as_str() {
            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
                Some(true)
            }
            "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False"
            | "FALSE" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// `foreach`'s `collect` and `sequential`: a [`flag`], or a number or `""`,
/// `"0"`, `"1"`, which they took (as truthy) before the YAML words came.
pub fn loose_flag(v: &Value) -> Option<bool> {
    flag(v).or_else(|| match v {
        Value::Number(_) => Some(truthy(v)),
        Value::String(s) if matches!(s.as_str(), "" | "0" | "1") => Some(truthy(v)),
        _ => None,
    })
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !(s.is_empty() || s == "false" || s == "0"),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `foreach`'s `concurrency`: a whole number, at least 1.
pub fn items_at_once(v: &Value) -> Option<u32> {
    as_number(Some(v))
        .filter(|n| n.fract() == 0.0 && *n >= 1.0)
        .map(|n| n.min(u32::MAX as f64) as u32)
}

/// Why `v` is no `foreach` `concurrency`.
pub fn bad_items_at_once(v: &Value) -> String {
    format!("`concurrency` is how many items run at once, a whole number from 1, not {v}")
}

fn as_number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Runs a built-in. `raw` holds the task's unevaluated inputs (`while` re-evaluates
/// its condition on every iteration). A task's `concurrency` is not seen here:
/// the state machine applies it to the sub-workflow the task runs.
pub fn run(name: &str, inputs: &Inputs, raw: &Inputs) -> Outcome {
    match name {
        "noop" | "nop" => pass(default_input(inputs), raw.get("default"), "input"),
        // As Fission Workflows' compose: nothing, the one input, or every
        // input merged into one map (`default` among them).
        // As Fission Workflows' compose: a lone `default` input is the
        // output; any other inputs are merged into one map (`default` too).
        "compose" => match (inputs.len(), inputs.get("default")) {
            (0, _) => Outcome::Output(Value::Null),
            (1, Some(only)) => pass(only.clone(), raw.get("default"), "input"),
            _ => Outcome::Output(Value::Object(inputs.clone().into_iter().collect())),
        },
        // As Fission Workflows' if: the condition is required, and a boolean.
        "if" => match inputs.get("if") {
            None => Outcome::Invalid("if needs the input `if`, the condition".into()),
            Some(cond) => match flag(cond) {
                Some(cond) => {
                    let branch = if cond { "then" } else { "else" };
                    pass(
                        inputs.get(branch).cloned().unwrap_or(Value::Null),
                        raw.get(branch),
                        branch,
                    )
                }
                None => Outcome::Invalid(format!(
                    "if: the condition must be true or false, not {cond}"
                )),
            },
        },
        "switch" => switch(inputs, raw),
        "foreach" => foreach(inputs, raw),
        "repeat" => repeat(inputs, raw),
        "while" => while_loop(inputs, raw),
        "callback" => match inputs.get("notify") {
            None | Some(Value::Null) => Outcome::Callback { notify: None },
            Some(Value::String(f)) if !f.is_empty() => Outcome::Callback {
                notify: Some(f.clone()),
            },
            Some(other) => Outcome::Invalid(format!(
                "callback: notify must be a function name, not {other}"
            )),
        },
        "sleep" => {
            let d = match inputs.get("default").or_else(|| inputs.get("duration")) {
                None | Some(Value::Null) => Some(Duration::from_secs(1)),
                Some(Value::Number(n)) => n.as_u64().and_then(crate::spec::duration_of_ms),
                // Text without a unit (`"5"`, a caller's body) is refused, as
                // Fission Workflows refused it; a number is milliseconds.
                Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => None,
                Some(Value::String(s)) => parse_duration(s),
                _ => None,
            };
            match d {
                Some(d) => Outcome::Sleep(d),
                None => {
                    let given = default_input(inputs);
                    let why = match &given {
                        Value::String(s) => crate::spec::not_a_duration(s, "\"1s\""),
                        Value::Number(n) => crate::spec::not_a_duration(&n.to_string(), "\"1s\""),
                        _ => "is not a duration (e.g. \"1s\")".to_string(),
                    };
                    Outcome::Invalid(format!("sleep: {given} {why}"))
                }
            }
        }
        "fail" => {
            // Its input (`inputs: "why"`), or a `message` given by name.
            let why = match inputs.get("default") {
                Some(v) if !v.is_null() => v.clone(),
                _ => inputs.get("message").cloned().unwrap_or(Value::Null),
            };
            let msg = as_text(&why);
            Outcome::Fail(if msg.is_empty() {
                // Fission Workflows' words (`defaultErrMsg`), which callers
                // may match on.
                "fail function triggered".into()
            } else {
                msg
            })
        }
        "javascript" => javascript(inputs),
        "http" => http(inputs),
        other => Outcome::Fail(format!("{other:?} is not a built-in")),
    }
}

fn switch(inputs: &Inputs, raw: &Inputs) -> Outcome {
    let Some(value) = inputs.get("switch") else {
        return Outcome::Invalid("switch needs the input `switch`".into());
    };
    let key = as_text(value);
    if let Some(cases) = inputs.get("cases") {
        let Some(cases) = cases.as_array() else {
            return Outcome::Invalid("switch: `cases` must be a list of {case, action}".into());
        };
        for (i, c) in cases.iter().enumerate() {
            let Some(m) = c.as_object() else {
                return Outcome::Invalid(
                    "switch: a case must be a map with `case` and `action`".into(),
                );
            };
            let Some(case) = m.get("case") else {
                return Outcome::Invalid("switch: a case has no `case`".into());
            };
            if as_text(case) == key {
                let written = raw
                    .get("cases")
                    .and_then(|c| c.get(i))
                    .and_then(|c| c.get("action"));
                return pass(
                    m.get("action").cloned().unwrap_or(Value::Null),
                    written,
                    "action",
                );
            }
        }
    }
    pass(
        inputs.get("default").cloned().unwrap_or(Value::Null),
        raw.get("default"),
        "default",
    )
}

/// `foreach` runs `do` once per item, as the tasks `do_0`, `do_1`, ... of a
/// sub-workflow whose `collector` gathers their outputs in order. A task `do`
/// gets the item as its input `_item` (and `_index`); a workflow `do` runs with
/// the item as its invocation input (`param()`, `param('_item')`,
/// `param('_index')`). At most `concurrency` items (1 when `sequential`) run
/// at once: the sub-workflow's own `concurrency`.
fn foreach(inputs: &Inputs, raw: &Inputs) -> Outcome {
    let items = match inputs.get("foreach") {
        Some(Value::Array(items)) => items,
        None => return Outcome::Invalid("foreach needs the input `foreach`, a list".into()),
        Some(other) => {
            let mut shown = other.to_string();
            if shown.len() > 80 {
                let cut = (0..=80)
                    .rev()
                    .find(|i| shown.is_char_boundary(*i))
                    .unwrap_or(0);
                shown.truncate(cut);
                shown.push_str("...");
            }
            return Outcome::Invalid(format!(
                "foreach needs the input `foreach` to be a list, not {shown}"
            ));
        }
    };
    let action = match literal_do(raw) {
        Ok(a) => a,
        Err(got) => return Outcome::Invalid(format!("foreach needs the input `do`, {got}")),
    };
    // Said before a task is made: a run holds at most so many.
    let most = crate::driver::MAX_TASKS_PER_RUN;
    if items.len() > most {
        return Outcome::Invalid(format!(
            "foreach: {} items, more than the {most} tasks a run may hold",
            items.len()
        ));
    }
    let mut flags = [("collect", true), ("sequential", false)];
    for (name, value) in &mut flags {
        match inputs.get(*name).filter(|v| !v.is_null()) {
            None => {}
            Some(v) => match loose_flag(v) {
                Some(b) => *value = b,
                None => {
                    return Outcome::Invalid(format!(
                        "foreach: `{name}` must be true or false, not {v}"
                    ))
                }
            },
        }
    }
    let [(_, collect), (_, sequential)] = flags;
    let limit = match inputs.get("concurrency") {
        _ if sequential => Some(1),
        None | Some(Value::Null) => None,
        Some(v) => match items_at_once(v) {
            Some(n) => Some(n),
            // 0 or -1 ran one at a time, "x" all at once.
            None => return Outcome::Invalid(format!("foreach: {}", bad_items_at_once(v))),
        },
    };
    let mut tasks = serde_json::Map::new();
    let mut collected = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let t = if is_workflow_spec(action) {
            let mut workflow = action.clone();
            if let Some(m) = workflow.as_object_mut() {
                m.insert(
                    "invocation".into(),
                    json!({"default": item, "_item": item, "_index": i}),
                );
            }
            json!({"run": "noop", "inputs": workflow})
        } else {
            let mut t = action.clone();
            inject(&mut t, "_item", item.clone());
            inject(&mut t, "_index", json!(i));
            t
        };
        tasks.insert(format!("do_{i}"), t);
        if collect {
            collected.push(Value::String(format!("{{ output('do_{i}') }}")));
        }
    }
    let requires: Vec<Value> = (0..items.len()).map(|i| json!(format!("do_{i}"))).collect();
    // Without `collect`, nothing: Fission Workflows' collector has no inputs.
    let collector = if collect {
        json!({"run": "compose", "inputs": {"default": collected}, "requires": requires})
    } else {
        json!({"run": "noop", "requires": requires})
    };
    tasks.insert("collector".into(), collector);
    let mut workflow = json!({"output": "collector", "tasks": tasks});
    if let (Some(n), Some(m)) = (limit, workflow.as_object_mut()) {
        m.insert("concurrency".into(), json!(n));
    }
    Outcome::Tasks(workflow)
}

/// The `do` a loop runs: a task or workflow written in the workflow, never an
/// expression's value (data, which whoever sent it would otherwise choose to
/// run). Err: what is wrong, after "needs the input `do`, ".
fn literal_do(raw: &Inputs) -> Result<&Value, &'static str> {
    match raw.get("do") {
        Some(d) if is_task_spec(d) || is_workflow_spec(d) => Ok(d),
        Some(v @ Value::String(_)) if crate::expr::contains_expression(v) => {
            Err("a task or a workflow written in the workflow, not an expression's value")
        }
        _ => Err("a task or a workflow"),
    }
}

/// `v`, which a built-in passes on from its input `written` (as `written` is
/// in the task, before evaluation): a task or workflow spec written there in
/// the workflow runs (`then` of an `if`, a `switch` case's `action`, a
/// `noop`'s input). Anything else is the output, a spec among it: one that
/// arrived as data (the caller's input, a function's answer, a loop's `_item`)
/// would otherwise let whoever sends data choose what runs and where it sends
/// requests. A spec written in a task is never evaluated, so it is `v` itself.
fn pass(v: Value, written: Option<&Value>, name: &'static str) -> Outcome {
    match written {
        Some(w) if *w == v && is_workflow_spec(w) => Outcome::Tasks(v),
        Some(w) if *w == v && is_task_spec(w) => Outcome::Task { name, spec: v },
        _ => Outcome::Output(v),
    }
}

fn repeat(inputs: &Inputs, raw: &Inputs) -> Outcome {
    let Some(times) = as_number(inputs.get("times")) else {
        return Outcome::Invalid("repeat needs the input `times`, a number".into());
    };
    let action = match literal_do(raw) {
        Ok(a) if is_task_spec(a) => a,
        Ok(_) => return Outcome::Invalid("repeat needs the input `do`, a task".into()),
        Err(got) => return Outcome::Invalid(format!("repeat needs the input `do`, {got}")),
    };
    if times.is_nan() || times > MAX_REPEAT as f64 {
        return Outcome::Invalid(format!(
            "repeat: times is {times}; a run can repeat a task at most {MAX_REPEAT} times"
        ));
    }
    // As the document's own check says it (a count of -1 or 2.5 ran 0 or 2
    // times without a word).
    if times < 0.0 || times.fract() != 0.0 {
        return Outcome::Invalid(format!(
            "repeat needs `times`, a whole number from 0 to {MAX_REPEAT}, not {times}"
        ));
    }
    let times = times as usize;
    if times == 0 {
        return Outcome::Output(Value::Null);
    }
    let mut tasks = serde_json::Map::new();
    for i in 0..times {
        let mut t = action.clone();
        if let Some(m) = t.as_object_mut() {
            m.remove("requires");
        }
        if i > 0 {
            inject(
                &mut t,
                "_prev",
                json!(format!("{{ output('do_{}') }}", i - 1)),
            );
            require(&mut t, &format!("do_{}", i - 1));
        }
        tasks.insert(format!("do_{i}"), t);
    }
    Outcome::Tasks(json!({"output": format!("do_{}", times - 1), "tasks": tasks}))
}

fn while_loop(inputs: &Inputs, raw: &Inputs) -> Outcome {
    let Some(cond) = inputs.get("expr") else {
        return Outcome::Invalid("while needs the input `expr`".into());
    };
    let Some(limit) = as_number(inputs.get("limit")) else {
        return Outcome::Invalid("while needs the input `limit`, a number".into());
    };
    let action = match literal_do(raw) {
        Ok(a) => a,
        Err(got) => return Outcome::Invalid(format!("while needs the input `do`, {got}")),
    };
    if limit.is_nan() || limit > MAX_WHILE as f64 {
        return Outcome::Invalid(format!(
            "while: limit is {limit}; a run can loop at most {MAX_WHILE} times"
        ));
    }
    // As the document's own check says it (a caller's -1 or 2.5 ran and
    // then failed for the limit).
    if limit < 0.0 || limit.fract() != 0.0 {
        return Outcome::Invalid(format!(
            "while needs `limit`, a whole number of iterations from 0 to {MAX_WHILE}, not {limit}"
        ));
    }
    // Counts are whole numbers, shown as such in the run (`_count: 3`, not
    // `3.0`); `limit` is whole from here on.
    let count = as_number(inputs.get("_count")).unwrap_or(0.0) as u64;
    let limit = limit as u64;
    if !truthy(cond) {
        return Outcome::Output(inputs.get("_prev").cloned().unwrap_or(Value::Null));
    }
    if count >= limit {
        return Outcome::Fail(format!("while: limit of {limit} iterations exceeded"));
    }
    let delay = inputs
        .get("delay")
        .cloned()
        .unwrap_or_else(|| json!("100ms"));
    let mut act = action.clone();
    if is_task_spec(&act) {
        inject(
            &mut act,
            "_prev",
            inputs.get("_prev").cloned().unwrap_or(Value::Null),
        );
        // A loop in a loop counts its own iterations: the outer's count
        // made the inner start where the outer was (and its `limit` with it).
        if act.get("run").and_then(Value::as_str) != Some("while") {
            inject(&mut act, "_count", json!(count + 1));
        }
        if let Some(m) = act.as_object_mut() {
            m.insert("requires".into(), json!(["wait"]));
        }
    }
    let mut cond_inputs = serde_json::Map::new();
    cond_inputs.insert(
        "expr".into(),
        raw.get("expr").cloned().unwrap_or_else(|| cond.clone()),
    );
    cond_inputs.insert("limit".into(), json!(limit));
    cond_inputs.insert("delay".into(), delay.clone());
    cond_inputs.insert("do".into(), action.clone());
    cond_inputs.insert("_count".into(), json!(count + 1));
    cond_inputs.insert("_prev".into(), json!("{ output('action') }"));
    // A loop that is a `foreach`'s `do` keeps its item for every check
    // (`task().Inputs._item` in `expr`), as written in the loop's task.
    for key in ["_item", "_index"] {
        if let Some(v) = raw.get(key) {
            cond_inputs.insert(key.into(), v.clone());
        }
    }
    let mut tasks = serde_json::Map::new();
    tasks.insert("wait".into(), json!({"run": "sleep", "inputs": delay}));
    if is_task_spec(&act) {
        tasks.insert("action".into(), act);
    } else {
        tasks.insert(
            "action".into(),
            json!({"run": "noop", "inputs": act, "requires": ["wait"]}),
        );
    }
    tasks.insert(
        "condition".into(),
        json!({"run": "while", "inputs": cond_inputs, "requires": ["action"]}),
    );
    Outcome::Tasks(json!({"output": "condition", "tasks": tasks}))
}

fn javascript(inputs: &Inputs) -> Outcome {
    let Some(code) = inputs.get("expr").and_then(Value::as_str) else {
        return Outcome::Invalid("javascript needs the input `expr`, a string".into());
    };
    let args = inputs.get("args").cloned().unwrap_or(Value::Null);
    let scope = json!({"args": args});
    let src = crate::expr::expression_source(code).unwrap_or(code);
    // `args` as documented, `arg` as Fission Workflows spelled it, and, as Fission
    // Workflows does, each key of a map `args` as a variable of its own.
    let mut wrapped = String::from("{ var args = $.args; var arg = args; ");
    if let Some(map) = args.as_object() {
        for key in map.keys().filter(|k| binds_as_variable(k)) {
            let quoted = Value::String(key.clone());
            wrapped.push_str(&format!("var {key} = args[{quoted}]; "));
        }
    }
    wrapped.push_str(src);
    wrapped.push_str(" }");
    match crate::expr::eval_isolated(scope, wrapped) {
        Ok(v) => Outcome::Output(v),
        Err(e) => Outcome::Fail(format!("javascript: {}", e.message)),
    }
}

/// JavaScript's reserved words: an `args` key spelled like one stays reachable as
/// `args["key"]` only.
const RESERVED: &[&str] = &[
    "await",
    "break",
    "case",
    "catch",
    "class",
    "const",
    "continue",
    "debugger",
    "default",
    "delete",
    "do",
    "else",
    "enum",
    "export",
    "extends",
    "false",
    "finally",
    "for",
    "function",
    "if",
    "implements",
    "import",
    "in",
    "instanceof",
    "interface",
    "let",
    "new",
    "null",
    "package",
    "private",
    "protected",
    "public",
    "return",
    "static",
    "super",
    "switch",
    "this",
    "throw",
    "true",
    "try",
    "typeof",
    "var",
    "void",
    "while",
    "with",
    "yield",
    "eval",
    "arguments",
    "undefined",
    "NaN",
    "Infinity",
];

/// Whether a key of a map `args` becomes a variable of the `javascript` built-in:
/// an identifier that is not reserved, not `args` (the whole map) and not one of
/// the expression helpers (`$`, `param`, `task`, ...), which it would hide.
fn binds_as_variable(key: &str) -> bool {
    let mut chars = key.chars();
    let starts = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$');
    starts
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && !key.starts_with("__")
        && !RESERVED.contains(&key)
        && !matches!(
            key,
            "$" | "args"
                | "taskId"
                | "task"
                | "param"
                | "input"
                | "output"
                | "outputHeaders"
                | "uid"
        )
}

/// Why `url` (an http built-in's, or a task's `run`) cannot be requested, if
/// it cannot: it must be an http or https URL with a host.
pub fn bad_url(url: &str) -> Option<String> {
    let fine = url.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    });
    (!fine).then(|| format!("{url:?} is not an http or https URL with a host"))
}

/// Why `method` cannot be an HTTP request's method, if it cannot.
pub fn bad_method(method: &str) -> Option<String> {
    http::Method::from_bytes(method.as_bytes())
        .is_err()
        .then(|| format!("{method:?} is not an HTTP method (GET, POST, PUT, ...)"))
}

fn http(inputs: &Inputs) -> Outcome {
    let url = inputs
        .get("url")
        .or_else(|| inputs.get("default"))
        .map(as_text)
        .unwrap_or_default();
    if url.is_empty() {
        return Outcome::Invalid("http needs the input `url`".into());
    }
    // As Fission Workflows: a URL without a scheme is http.
    let url = if url.contains("://") {
        url
    } else {
        format!("http://{url}")
    };
    let mut headers: Vec<(String, String)> = inputs
        .get("headers")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), as_text(v))).collect())
        .unwrap_or_default();
    // `content-type` forces the request's type; a text body is text/plain
    // unless the headers say otherwise (a JSON body is application/json).
    let typed = |h: &[(String, String)]| {
        h.iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    };
    if let Some(ct) = inputs.get("content-type").map(as_text) {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-type"));
        headers.push(("Content-Type".into(), ct));
    } else if !typed(&headers) && inputs.get("body").is_some_and(Value::is_string) {
        headers.push(("Content-Type".into(), "text/plain; charset=utf-8".into()));
    }
    let method = inputs
        .get("method")
        .map(as_text)
        .unwrap_or_else(|| "GET".into())
        .to_uppercase();
    if let Some(why) = bad_url(&url).or_else(|| bad_method(&method)) {
        return Outcome::Invalid(format!("http: {why}"));
    }
    Outcome::Http(HttpRequest {
        url,
        method,
        headers,
        body: inputs.get("body").cloned(),
    })
}

fn inject(task: &mut Value, key: &str, value: Value) {
    let Some(m) = task.as_object_mut() else {
        return;
    };
    let inputs = match m.remove("inputs") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(o)) => o,
        Some(other) => serde_json::Map::from_iter([("default".to_string(), other)]),
    };
    let mut inputs = inputs;
    inputs.insert(key.to_string(), value);
    m.insert("inputs".into(), Value::Object(inputs));
}

fn require(task: &mut Value, dep: &str) {
    if let Some(m) = task.as_object_mut() {
        let reqs = m.entry("requires").or_insert_with(|| json!([]));
        if let Some(list) = reqs.as_array_mut() {
            list.push(json!(dep));
        }
    }
}

/// A dynamic sub-workflow: its tasks, its output task's id, its own
/// `concurrency` and, for a `foreach` item, its invocation input.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicTasks {
    pub tasks: BTreeMap<String, TaskSpec>,
    pub output: String,
    pub concurrency: Option<u32>,
    pub invocation: Option<Value>,
}

/// A task's output that is a task or workflow spec, as a dynamic
/// sub-workflow; an invalid one is an error.
pub fn dynamic_workflow(value: &Value) -> Option<Result<DynamicTasks, String>> {
    if is_workflow_spec(value) {
        // Read from the value in place (`from_value` takes it whole: a copy).
        let spec = match WorkflowSpec::deserialize(value) {
            Ok(s) => s,
            Err(e) => return Some(Err(format!("invalid workflow spec: {e}"))),
        };
        if let Some(p) = crate::validate::fallback_problems(&spec.tasks, &spec.output).first() {
            return Some(Err(format!("invalid workflow spec: {}", p.message)));
        }
        if !spec.tasks.contains_key(&spec.output) {
            return Some(Err(format!(
                "invalid workflow spec: output task {:?} is not one of its tasks",
                spec.output
            )));
        }
        for (id, t) in &spec.tasks {
            if let Some(r) = t.requires.iter().find(|r| !spec.tasks.contains_key(*r)) {
                return Some(Err(format!(
                    "invalid workflow spec: task {id:?} requires unknown {r:?}"
                )));
            }
        }
        let waits = crate::validate::waits_for(&spec.tasks);
        let graph = TaskGraph::new(waits.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        if let Some(c) = graph.cycles().first() {
            return Some(Err(format!(
                "invalid workflow spec: cycle {}",
                c.join(" -> ")
            )));
        }
        return Some(Ok(DynamicTasks {
            tasks: spec.tasks,
            output: spec.output,
            concurrency: spec.concurrency,
            // Set by `foreach` on the workflow an item runs, never by a
            // document (validation refuses the key there).
            invocation: value.get("invocation").cloned(),
        }));
    }
    is_task_spec(value).then(|| dynamic_task("task", value))
}

impl Outcome {
    /// The sub-workflow a `Tasks` or `Task` outcome runs (none for another).
    pub fn sub_workflow(&self) -> Option<Result<DynamicTasks, String>> {
        match self {
            Outcome::Tasks(v) => dynamic_workflow(v),
            Outcome::Task { name, spec } => Some(dynamic_task(name, spec)),
            _ => None,
        }
    }
}

/// A task spec (written in the input `name`) as a sub-workflow of that one
/// task, named `name`; what it waits for outside it is not its to wait for.
pub fn dynamic_task(name: &str, value: &Value) -> Result<DynamicTasks, String> {
    let mut spec = TaskSpec::deserialize(value).map_err(|e| format!("invalid task spec: {e}"))?;
    spec.requires.clear();
    spec.on_failure = None;
    Ok(DynamicTasks {
        tasks: BTreeMap::from([(name.to_string(), spec)]),
        output: name.into(),
        concurrency: None,
        invocation: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(v: Value) -> Inputs {
        v.as_object().unwrap().clone().into_iter().collect()
    }

    fn out(name: &str, v: Value) -> Value {
        match run(name, &ins(v.clone()), &ins(v)) {
            Outcome::Output(o) | Outcome::Tasks(o) | Outcome::Task { spec: o, .. } => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_spec_written_in_the_task_runs_one_that_arrived_as_data_is_data() {
        let task = json!({"run": "dump", "inputs": "injected"});
        // `inputs: {run: dump, ...}`: written in the workflow.
        let raw = ins(json!({"default": task}));
        let written = |name| Outcome::Task {
            name,
            spec: task.clone(),
        };
        assert_eq!(run("noop", &raw, &raw), written("input"));
        // `inputs: "{ param() }"` that evaluated to the same map: data.
        let raw = ins(json!({"default": "{ param() }"}));
        let evaluated = ins(json!({"default": task}));
        assert_eq!(run("noop", &evaluated, &raw), Outcome::Output(task.clone()));
        // An `if` runs the branch it holds, not one an expression made.
        let raw = ins(json!({"if": "{ true }", "then": task, "else": "{ param() }"}));
        let evaluated = ins(json!({"if": true, "then": task, "else": task}));
        assert_eq!(run("if", &evaluated, &raw), written("then"));
        let evaluated = ins(json!({"if": false, "then": task, "else": task}));
        assert_eq!(run("if", &evaluated, &raw), Outcome::Output(task.clone()));
        // What a loop put in (`_item`, `_prev`) is data, even held literally.
        let raw = ins(json!({"default": "{ task().Inputs._item }", "_item": task}));
        let evaluated = ins(json!({"default": task, "_item": task}));
        assert_eq!(run("noop", &evaluated, &raw), Outcome::Output(task.clone()));
        // A loop's `do` must be written in the workflow.
        let raw = ins(json!({"foreach": [1], "do": "{ param() }"}));
        let evaluated = ins(json!({"foreach": [1], "do": task}));
        match run("foreach", &evaluated, &raw) {
            Outcome::Invalid(m) => assert!(m.contains("not an expression's value"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn simple_builtins() {
        assert_eq!(out("noop", json!({"default": 3})), json!(3));
        assert_eq!(out("noop", json!({})), Value::Null);
        assert_eq!(out("compose", json!({"default": "x"})), json!("x"));
        assert_eq!(
            out("compose", json!({"a": 1, "b": 2})),
            json!({"a": 1, "b": 2})
        );
        assert_eq!(
            out("if", json!({"if": true, "then": "y", "else": "n"})),
            json!("y")
        );
        assert_eq!(
            out("if", json!({"if": false, "then": "y", "else": "n"})),
            json!("n")
        );
        // As Fission Workflows: `nop` is `noop`; compose merges every input
        // when there are several (`default` among them), and gives nothing for
        // none; `if` needs a boolean condition.
        assert_eq!(out("nop", json!({"default": 4})), json!(4));
        assert_eq!(
            out("compose", json!({"default": "a", "other": "b"})),
            json!({"default": "a", "other": "b"})
        );
        assert_eq!(out("compose", json!({})), Value::Null);
        // One input of another name is still a map (Fission's compose.go).
        assert_eq!(out("compose", json!({"a": 1})), json!({"a": 1}));
        assert!(matches!(
            run("if", &ins(json!({"then": 1})), &Inputs::new()),
            Outcome::Invalid(m) if m.contains("needs the input `if`")
        ));
        assert!(matches!(
            run("if", &ins(json!({"if": "maybe", "then": 1})), &Inputs::new()),
            Outcome::Invalid(m) if m.contains("true or false")
        ));
        // http: a URL without a scheme is http; `content-type` sets the type,
        // and a text body is text/plain.
        let req = |inputs: Value| match run("http", &ins(inputs), &Inputs::new()) {
            Outcome::Http(r) => r,
            other => panic!("{other:?}"),
        };
        let r = req(json!({"url": "127.0.0.1:9/x", "body": "plain", "method": "post"}));
        assert_eq!(r.url, "http://127.0.0.1:9/x");
        assert_eq!(
            r.headers,
            [(
                "Content-Type".to_string(),
                "text/plain; charset=utf-8".to_string()
            )]
        );
        let r = req(
            json!({"url": "https://h/x", "content-type": "application/x-custom", "headers": {"content-type": "a/b"}}),
        );
        assert_eq!(r.url, "https://h/x");
        assert_eq!(
            r.headers,
            [(
                "Content-Type".to_string(),
                "application/x-custom".to_string()
            )]
        );
        assert_eq!(
            out(
                "switch",
                json!({"switch": "b", "cases": [{"case": "a", "action": 1}, {"case": "b", "action": 2}], "default": 0})
            ),
            json!(2)
        );
        assert_eq!(
            out("switch", json!({"switch": "z", "cases": [], "default": 0})),
            json!(0)
        );
        assert_eq!(
            out(
                "javascript",
                json!({"expr": "args.a * 2", "args": {"a": 21}})
            ),
            json!(42)
        );
        // Fission Workflows binds each key of a map `args` as a variable, and a
        // non-map `args` as `arg`; `args` (and `arg`) still hold the whole value.
        assert_eq!(
            out(
                "javascript",
                json!({"expr": "({ 'fn1': fn2, 'fn2': fn1 + fn2, 'n': args.fn1 })", "args": {"fn1": 3, "fn2": 5}})
            ),
            json!({"fn1": 5, "fn2": 8, "n": 3})
        );
        assert_eq!(
            out("javascript", json!({"expr": "arg * 2", "args": 4})),
            json!(8)
        );
        assert_eq!(
            out(
                "javascript",
                json!({"expr": "[arg.a, args['for'], args['x-y']]", "args": {"a": 1, "for": 2, "x-y": 3}})
            ),
            json!([1, 2, 3])
        );
        assert_eq!(
            run("sleep", &ins(json!({"default": "2s"})), &Inputs::new()),
            Outcome::Sleep(Duration::from_secs(2))
        );
        // Milliseconds as a number (an expression's, say) are bounded as a
        // duration written out is.
        assert_eq!(
            run("sleep", &ins(json!({"default": 1500})), &Inputs::new()),
            Outcome::Sleep(Duration::from_millis(1500))
        );
        assert!(matches!(
            run("sleep", &ins(json!({"default": u64::MAX})), &Inputs::new()),
            Outcome::Invalid(why) if why.contains("is longer than the longest duration")
        ));
        // Text without a unit is no duration (Go's have units).
        assert!(matches!(
            run("sleep", &ins(json!({"default": "5"})), &Inputs::new()),
            Outcome::Invalid(why) if why.contains("is not a duration")
        ));
        assert_eq!(
            run("callback", &Inputs::new(), &Inputs::new()),
            Outcome::Callback { notify: None }
        );
        assert_eq!(
            run("callback", &ins(json!({"notify": "tell"})), &Inputs::new()),
            Outcome::Callback {
                notify: Some("tell".into())
            }
        );
        assert!(matches!(
            run("callback", &ins(json!({"notify": 3})), &Inputs::new()),
            Outcome::Invalid(m) if m.contains("notify must be a function name")
        ));
        assert_eq!(
            run("fail", &ins(json!({"default": "nope"})), &Inputs::new()),
            Outcome::Fail("nope".into())
        );
        assert_eq!(
            run(
                "fail",
                &ins(json!({"message": "out of stock"})),
                &Inputs::new()
            ),
            Outcome::Fail("out of stock".into())
        );
        assert_eq!(
            run("fail", &Inputs::new(), &Inputs::new()),
            Outcome::Fail("fail function triggered".into())
        );
    }

    #[test]
    fn foreach_builds_a_workflow() {
        let wf = out(
            "foreach",
            json!({"foreach": [1, 2, 3], "do": {"run": "noop", "inputs": "{ task().Inputs._item }"}, "sequential": true}),
        );
        let DynamicTasks {
            tasks,
            output,
            concurrency,
            ..
        } = dynamic_workflow(&wf).unwrap().unwrap();
        assert_eq!(output, "collector");
        assert_eq!(tasks.len(), 4);
        assert!(tasks["do_2"].requires.is_empty(), "no chain: a limit");
        assert_eq!(concurrency, Some(1), "sequential is one item at a time");
        assert_eq!(tasks["do_1"].named_inputs()["_item"], json!(2));
        assert_eq!(tasks["collector"].requires.len(), 3);
        let wf = out(
            "foreach",
            json!({"foreach": [1], "do": {"run": "noop"}, "concurrency": 4}),
        );
        assert_eq!(dynamic_workflow(&wf).unwrap().unwrap().concurrency, Some(4));
        // `collect: false`: the items still run; their outputs are not kept.
        let wf = out(
            "foreach",
            json!({"foreach": [1, 2], "do": {"run": "noop"}, "collect": false}),
        );
        let DynamicTasks { tasks, .. } = dynamic_workflow(&wf).unwrap().unwrap();
        assert_eq!(tasks["collector"].run, "noop");
        assert_eq!(tasks["collector"].inputs, None);
        assert_eq!(tasks["collector"].requires.len(), 2);
    }

    /// `collect: no`, `sequential: yes`, `if: on`: YAML 1.1's booleans, as
    /// Fission Workflows' parser read them; any other text is refused, not
    /// taken for true.
    #[test]
    fn yes_or_no_inputs_take_yaml_1_1_words_and_refuse_other_text() {
        let each = |flags: Value| {
            let mut v = json!({"foreach": [1, 2], "do": {"run": "noop"}});
            v.as_object_mut()
                .unwrap()
                .extend(flags.as_object().unwrap().clone());
            run("foreach", &ins(v.clone()), &ins(v))
        };
        let Outcome::Tasks(wf) = each(json!({"collect": "no", "sequential": "yes"})) else {
            panic!()
        };
        let DynamicTasks {
            tasks, concurrency, ..
        } = dynamic_workflow(&wf).unwrap().unwrap();
        assert_eq!(
            (tasks["collector"].inputs.as_ref(), concurrency),
            (None, Some(1))
        );
        let Outcome::Tasks(wf) = each(json!({"collect": "On", "sequential": null})) else {
            panic!()
        };
        let DynamicTasks {
            tasks, concurrency, ..
        } = dynamic_workflow(&wf).unwrap().unwrap();
        assert_eq!(
            (tasks["collector"].inputs.is_some(), concurrency),
            (true, None)
        );
        for bad in [json!({"collect": "banana"}), json!({"sequential": [1]})] {
            match each(bad.clone()) {
                Outcome::Invalid(m) => assert!(m.contains("must be true or false"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let branch = |cond: Value| {
            let v = json!({"if": cond, "then": "a", "else": "b"});
            run("if", &ins(v.clone()), &ins(v))
        };
        assert_eq!(branch(json!("on")), Outcome::Output(json!("a")));
        assert_eq!(branch(json!("N")), Outcome::Output(json!("b")));
        assert!(matches!(branch(json!("maybe")), Outcome::Invalid(_)));
    }

    #[test]
    fn foreach_runs_a_whole_workflow_per_item_with_the_item_as_its_input() {
        let inner = json!({"output": "b", "tasks": {
            "a": {"run": "noop", "inputs": "{ param() }"},
            "b": {"run": "noop", "inputs": "{ output('a') }", "requires": ["a"]},
        }});
        let wf = out("foreach", json!({"foreach": ["x", "y"], "do": inner}));
        let DynamicTasks { tasks, .. } = dynamic_workflow(&wf).unwrap().unwrap();
        // Each item is a task whose output is the workflow, with the item as
        // its invocation input; the expressions inside stay unevaluated.
        let item = tasks["do_1"].named_inputs()["default"].clone();
        let run = dynamic_workflow(&item).unwrap().unwrap();
        assert_eq!(run.output, "b");
        assert_eq!(
            run.invocation,
            Some(json!({"default": "y", "_item": "y", "_index": 1}))
        );
        assert_eq!(run.tasks["a"].inputs, Some(json!("{ param() }")));
        // Neither a task nor a workflow: refused.
        let bad = json!({"foreach": [1], "do": 3});
        assert!(
            matches!(run_builtin("foreach", bad), Outcome::Invalid(m) if m.contains("a task or a workflow"))
        );
        // What it was given instead of a list is said.
        let bad = json!({"foreach": {"items": [1]}, "do": {"run": "noop"}});
        assert!(
            matches!(run_builtin("foreach", bad), Outcome::Invalid(m) if m.ends_with(r#"not {"items":[1]}"#)),
        );
        // A `concurrency` that is no whole number from 1 is refused, not read
        // as one at a time (0, -1) or all at once ("x").
        for given in [json!(0), json!(-1), json!(1.5), json!("x")] {
            let bad = json!({"foreach": [1], "do": {"run": "noop"}, "concurrency": given});
            assert!(
                matches!(run_builtin("foreach", bad), Outcome::Invalid(m) if m.contains("whole number from 1")),
                "{given}"
            );
        }
    }

    fn run_builtin(name: &str, v: Value) -> Outcome {
        run(name, &ins(v.clone()), &ins(v))
    }

    #[test]
    fn a_dynamic_workflow_with_a_bad_fallback_is_refused() {
        let wf = json!({"output": "a", "tasks": {"a": {"run": "noop", "onFailure": "nope"}}});
        let e = dynamic_workflow(&wf).unwrap().unwrap_err();
        assert!(e.contains("nope"), "{e}");
        let wf = json!({"output": "a", "tasks": {
            "a": {"run": "noop", "onFailure": "f"},
            "f": {"run": "noop", "requires": ["a"]},
        }});
        let e = dynamic_workflow(&wf).unwrap().unwrap_err();
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn repeat_and_while_build_workflows() {
        let wf = out("repeat", json!({"times": 3, "do": {"run": "noop"}}));
        let DynamicTasks { tasks, output, .. } = dynamic_workflow(&wf).unwrap().unwrap();
        assert_eq!(output, "do_2");
        assert_eq!(tasks["do_2"].requires, vec!["do_1"]);
        let w = json!({"expr": true, "limit": 5, "do": {"run": "noop"}});
        let wf = out("while", w);
        let DynamicTasks { tasks, output, .. } = dynamic_workflow(&wf).unwrap().unwrap();
        assert_eq!(output, "condition");
        assert_eq!(tasks.len(), 3);
        // Its counts read as the user wrote them: whole numbers.
        let check = tasks["condition"].inputs.as_ref().unwrap();
        assert_eq!(check["limit"].to_string(), "5");
        assert_eq!(check["_count"].to_string(), "1");
        assert_eq!(
            tasks["action"].inputs.as_ref().unwrap()["_count"].to_string(),
            "1"
        );
        assert_eq!(
            out(
                "while",
                json!({"expr": false, "limit": 5, "do": {"run": "noop"}, "_prev": 7})
            ),
            json!(7)
        );
    }

    #[test]
    fn repeat_refuses_more_iterations_than_a_run_can_hold() {
        let big = json!({"times": 1e12, "do": {"run": "noop"}});
        match run("repeat", &ins(big.clone()), &ins(big)) {
            Outcome::Invalid(msg) => assert!(msg.contains("at most"), "{msg}"),
            other => panic!("{other:?}"),
        }
        for odd in [json!(-1), json!(2.5)] {
            let given = json!({"times": odd, "do": {"run": "noop"}});
            assert!(
                matches!(run("repeat", &ins(given.clone()), &ins(given)), Outcome::Invalid(m) if m.contains("whole number")),
                "{odd}"
            );
        }
        let inf = json!({"times": "inf", "do": {"run": "noop"}});
        assert!(matches!(
            run("repeat", &ins(inf.clone()), &ins(inf)),
            Outcome::Invalid(_)
        ));
        // A caller's count past the most a run holds: refused, where the
        // most still runs.
        let many = json!({"times": MAX_REPEAT + 1, "do": {"run": "noop"}});
        assert!(
            matches!(run("repeat", &ins(many.clone()), &ins(many)), Outcome::Invalid(m) if m.contains(&format!("at most {MAX_REPEAT} times")))
        );
        let most = json!({"times": MAX_REPEAT, "do": {"run": "noop"}});
        assert!(matches!(
            run("repeat", &ins(most.clone()), &ins(most)),
            Outcome::Tasks(_)
        ));
        let long = json!({"expr": true, "limit": MAX_WHILE + 1, "do": {"run": "noop"}});
        assert!(
            matches!(run("while", &ins(long.clone()), &ins(long)), Outcome::Invalid(m) if m.contains(&format!("at most {MAX_WHILE} times")))
        );
        let longest = json!({"expr": true, "limit": MAX_WHILE, "do": {"run": "noop"}});
        assert!(matches!(
            run("while", &ins(longest.clone()), &ins(longest)),
            Outcome::Tasks(_)
        ));
        // A caller's limit that is no whole number is refused as a literal
        // one is, before a first iteration.
        for odd in [json!(-1), json!(2.5)] {
            let given = json!({"expr": true, "limit": odd, "do": {"run": "noop"}});
            assert!(
                matches!(run("while", &ins(given.clone()), &ins(given)), Outcome::Invalid(m) if m.contains("a whole number of iterations")),
                "{odd}"
            );
        }
    }

    #[test]
    fn invalid_dynamic_workflow() {
        let bad = json!({"output": "x", "tasks": {"a": {"run": "noop"}}});
        assert!(dynamic_workflow(&bad).unwrap().is_err());
        assert!(dynamic_workflow(&json!({"a": 1})).is_none());
    }
}
