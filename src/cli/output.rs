//! How the CLI prints answers (a table or JSON), and the generic create/get/list/
//! update/delete of one kind of resource on the API.

use anyhow::Result;
use serde_json::Value;

use super::{ClientOpts, Output};
use crate::client::Client;

pub(super) fn print(opts: &ClientOpts, value: &Value, columns: &[(&str, &str)]) {
    if opts.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        );
        return;
    }
    let rows: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let cell = |row: &Value, ptr: &str| -> String {
        // `/a|/b`: the first of the fields the row has.
        let found = ptr
            .split('|')
            .map(|p| row.pointer(p))
            .find(|v| v.is_some_and(|v| !v.is_null()))
            .flatten();
        match found {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            // A command reads as it would be typed (and is given to --command).
            Some(Value::Array(a)) if ptr == "/command" => {
                let words: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                shlex::try_join(words).unwrap_or_default()
            }
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            // A map of names to shares (a canary route's functions): `v1:90,v2:10`.
            Some(Value::Object(o)) => o
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}:{}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_string)
                    )
                })
                .collect::<Vec<_>>()
                .join(","),
            Some(v) => v.to_string(),
        }
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|(_, p)| printable(cell(r, p))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(h.len())
        })
        .collect();
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(columns.iter().map(|(h, _)| h.to_string()).collect());
    for row in table {
        line(row);
    }
}

/// A cell as it can go to a terminal: the control characters a caller's or a
/// function's data may hold (a carriage return, an escape sequence that clears
/// the line, a tab that breaks the columns) are shown escaped, never sent.
pub(super) fn printable(text: String) -> String {
    shown_escaped(text, |c| c.is_control())
}

/// A line of a log (a function's output, a build's) as it can go to a
/// terminal: as `printable`, but a tab stays a tab (tracebacks indent with
/// it). Untrusted code wrote it: a carriage return and an erase sequence
/// could otherwise hide the line's own prefix and show a forged one, and
/// escape sequences could write to the clipboard.
pub(super) fn printable_log_line(text: &str) -> String {
    shown_escaped(text.to_string(), |c| c.is_control() && c != '\t')
}

fn shown_escaped(text: String, control: impl Fn(char) -> bool) -> String {
    // Control characters, and the invisible ones that reorder or hide text
    // (bidirectional overrides and isolates, zero-width marks).
    let hidden = |c: char| {
        control(c)
            || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    };
    if !text.chars().any(hidden) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One kind of resource on the API, as the CLI lists and changes it.
pub(super) struct Collection {
    pub(super) path: &'static str,
    pub(super) noun: &'static str,
    pub(super) columns: &'static [(&'static str, &'static str)],
}

impl Collection {
    pub(super) fn item(&self, opts: &ClientOpts, name: &str) -> String {
        format!("{}/{name}{}", self.path, opts.ns_query())
    }
    fn all(&self, opts: &ClientOpts) -> String {
        format!("{}{}", self.path, opts.ns_query())
    }
    pub(super) async fn create(&self, c: &Client, opts: &ClientOpts, body: &Value) -> Result<()> {
        let v: Value = c.post_json(&self.all(opts), body).await?;
        print(opts, &v, self.columns);
        Ok(())
    }
    /// As `create`, for a trigger (`noun`: `route`, `time trigger`): one
    /// whose function or workflow does not exist (yet) is made, as Fission's
    /// CLI makes it, with a warning; a call through it is a 404 until then.
    pub(super) async fn create_trigger(
        &self,
        c: &Client,
        opts: &ClientOpts,
        body: &Value,
        noun: &str,
    ) -> Result<()> {
        let v: Value = c.post_json(&self.all(opts), body).await?;
        self.show_trigger(c, opts, &v, noun).await;
        Ok(())
    }
    /// A trigger as the server answered it, after a warning of each function
    /// or workflow it calls that does not exist (yet).
    async fn show_trigger(&self, c: &Client, opts: &ClientOpts, v: &Value, noun: &str) {
        warn_missing_targets(c, v, noun).await;
        print(opts, v, self.columns);
    }
    pub(super) async fn show(&self, c: &Client, opts: &ClientOpts, name: &str) -> Result<()> {
        let v: Value = c.get(&self.item(opts, name)).await?;
        print(opts, &v, self.columns);
        Ok(())
    }
    pub(super) async fn list(
        &self,
        c: &Client,
        opts: &ClientOpts,
        scope: &super::AllNamespaces,
    ) -> Result<()> {
        self.list_where(c, opts, scope, |_| true).await
    }
    /// The list, of the items `keep` keeps.
    pub(super) async fn list_where(
        &self,
        c: &Client,
        opts: &ClientOpts,
        scope: &super::AllNamespaces,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<()> {
        let mut items: Vec<Value> = if scope.all {
            c.get(&format!("{}?all_namespaces=true", self.path)).await?
        } else {
            self.items(c, opts).await?
        };
        items.retain(|item| keep(item));
        print(
            opts,
            &Value::Array(items),
            &with_namespaces(self.columns, scope.all),
        );
        Ok(())
    }
    /// Every item of the namespace.
    pub(super) async fn items(&self, c: &Client, opts: &ClientOpts) -> Result<Vec<Value>> {
        c.get(&self.all(opts)).await
    }
    /// The stored resource, to change and `replace`.
    pub(super) async fn current(&self, c: &Client, opts: &ClientOpts, name: &str) -> Result<Value> {
        c.get(&self.item(opts, name)).await
    }
    pub(super) async fn replace(
        &self,
        c: &Client,
        opts: &ClientOpts,
        name: &str,
        body: &Value,
    ) -> Result<()> {
        let v: Value = c.put_json(&self.item(opts, name), body).await?;
        print(opts, &v, self.columns);
        Ok(())
    }
    /// As `replace`, for a trigger: one changed to call a function or
    /// workflow that does not exist (yet) is warned of, as at its creation.
    pub(super) async fn replace_trigger(
        &self,
        c: &Client,
        opts: &ClientOpts,
        name: &str,
        body: &Value,
        noun: &str,
    ) -> Result<()> {
        let v: Value = c.put_json(&self.item(opts, name), body).await?;
        self.show_trigger(c, opts, &v, noun).await;
        Ok(())
    }
    pub(super) async fn delete(&self, c: &Client, opts: &ClientOpts, name: &str) -> Result<()> {
        c.delete(&self.item(opts, name)).await?;
        deleted(opts, self.noun, Some(opts.ns()), name);
        Ok(())
    }
    /// Deletes `name`, and says it in `said` (one of several deleted).
    pub(super) async fn delete_one_of(
        &self,
        c: &Client,
        opts: &ClientOpts,
        name: &str,
        said: &mut DeletedList,
    ) -> Result<()> {
        c.delete(&self.item(opts, name)).await?;
        said.add(opts, self.noun, Some(opts.ns()), name);
        Ok(())
    }
}

/// `columns`, with the NAMESPACE column first when the list is of every
/// namespace (as kubectl's `-A`).
pub(super) fn with_namespaces<'a>(
    columns: &[(&'a str, &'a str)],
    all: bool,
) -> Vec<(&'a str, &'a str)> {
    let mut out = columns.to_vec();
    if all && !columns.iter().any(|(name, _)| *name == "NAMESPACE") {
        out.insert(0, ("NAMESPACE", "/namespace"));
    }
    out
}

/// What a delete says it did: `function hello deleted`, or with `-o json`
/// `{"deleted": {"kind": "function", "namespace": "default", "name": "hello"}}`,
/// so a script reading JSON gets JSON from every verb.
pub(super) fn deleted(opts: &ClientOpts, noun: &str, namespace: Option<&str>, name: &str) {
    if opts.json() {
        println!(
            "{}",
            serde_json::to_string_pretty(&deleted_json(noun, namespace, name)).unwrap_or_default()
        );
        return;
    }
    match namespace {
        Some(ns) if ns != "default" => println!("{noun} {ns}/{name} deleted"),
        _ => println!("{noun} {name} deleted"),
    }
}

/// `{"deleted": {"kind", "namespace", "name"}}`, as `deleted` prints it.
fn deleted_json(noun: &str, namespace: Option<&str>, name: &str) -> Value {
    let mut what = serde_json::json!({"kind": noun.replace(' ', ""), "name": name});
    if let Some(ns) = namespace {
        what["namespace"] = ns.into();
    }
    serde_json::json!({ "deleted": what })
}

/// A delete of one name that found nothing to delete (`--ignorenotfound`):
/// nothing said, or with `-o json` `{"deleted": null}`, so a script reading
/// JSON still gets a document.
pub(super) fn deleted_nothing(opts: &ClientOpts) {
    if opts.json() {
        println!("{}", serde_json::json!({ "deleted": null }));
    }
}

/// What a delete of every match (`route delete --function`, `pkg delete
/// --orphan`) says: a line for each as `deleted` says it, or with `-o json`
/// one array of them at the end (`[]` when there was none).
pub(super) struct DeletedList {
    json: bool,
    items: Vec<Value>,
}

impl DeletedList {
    pub(super) fn new(opts: &ClientOpts) -> DeletedList {
        DeletedList {
            json: opts.json(),
            items: Vec::new(),
        }
    }

    pub(super) fn add(
        &mut self,
        opts: &ClientOpts,
        noun: &str,
        namespace: Option<&str>,
        name: &str,
    ) {
        if self.json {
            self.items.push(deleted_json(noun, namespace, name));
        } else {
            deleted(opts, noun, namespace, name);
        }
    }

    /// Prints the array, with `-o json`.
    pub(super) fn finish(self) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&Value::Array(self.items)).unwrap_or_default()
            );
        }
    }
}

/// Warns of each function or workflow a trigger the server answered names
/// that does not exist (yet). What cannot be looked up is not warned of.
async fn warn_missing_targets(c: &Client, trigger: &Value, noun: &str) {
    let namespace = trigger["namespace"].as_str().unwrap_or("default");
    let name = trigger["name"].as_str().unwrap_or_default();
    let mut functions: Vec<&str> = trigger["function"].as_str().into_iter().collect();
    if let Some(weights) = trigger["function_weights"].as_object() {
        functions.extend(weights.keys().map(String::as_str));
    }
    let mut missing = Vec::new();
    for f in functions {
        let path = crate::spec::with_namespace(&format!("/v1/functions/{f}"), namespace);
        if matches!(c.get_opt::<Value>(&path).await, Ok(None)) {
            missing.push(format!("function {f:?}"));
        }
    }
    if let Some(w) = trigger["workflow"].as_str() {
        if matches!(
            c.get_opt::<Value>(&format!("/v1/workflows/{w}")).await,
            Ok(None)
        ) {
            missing.push(format!("workflow {w:?}"));
        }
    }
    for what in missing {
        eprintln!(
            "warning: {noun} {name:?} calls {what}, which does not exist (yet): each call through it fails until that is created"
        );
    }
}
