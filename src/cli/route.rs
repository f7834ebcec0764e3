//! `fusion route` (alias `httptrigger`): HTTP triggers, URLs to functions and workflows.

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::output::Collection;
use super::{ClientOpts, Name, SpecOpt};
use crate::client::Client;
use crate::spec::{model::Kind, save};

#[derive(Args)]
pub(super) struct RouteFields {
    /// A URL template with {params}, matched exactly: `/users/{id}`. The
    /// function gets each parameter as the header X-Fission-Params-<name>.
    #[arg(long, value_name = "TEMPLATE")]
    url: Option<String>,
    /// Or a path prefix: every path below it matches (`/api`).
    #[arg(long, conflicts_with = "url", value_name = "PATH")]
    prefix: Option<String>,
    /// An HTTP method it answers (repeatable); GET when a route is created
    /// without one, as Fission's CLI (`--method ANY`: every method).
    #[arg(long = "method", value_name = "METHOD")]
    methods: Vec<String>,
    /// The target function; given again, each with a --weight, functions that
    /// share the requests (Fission's canary: `--function v1 --weight 90
    /// --function v2 --weight 10`).
    #[arg(long, value_name = "FUNCTION")]
    function: Vec<String>,
    /// A --function's share of the requests, in percent (one for each
    /// --function, in their order; they add up to 100).
    #[arg(long, value_name = "PERCENT")]
    weight: Vec<u32>,
    /// Or the target workflow.
    #[arg(long, conflicts_with = "function", value_name = "WORKFLOW")]
    workflow: Option<String>,
    /// Only requests for this Host header match (any host when absent).
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// `async`: every request through the route is an asynchronous call (202
    /// at once), for callers that cannot set X-Async; `sync` (the default, as
    /// Fission's) leaves it to the request's X-Async or Prefer; `sync-only`:
    /// every request is answered, whatever its headers ask (they reach the
    /// function as sent).
    #[arg(long, value_name = "MODE", value_parser = ["sync", "async", "sync-only"])]
    invocation_mode: Option<String>,
    /// A prefix route sends its function the whole path, not what is below
    /// the prefix (Fission's `--keepprefix`; `--keepprefix=false` undoes it).
    #[arg(
        long = "keepprefix",
        alias = "keep-prefix",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    keep_prefix: Option<bool>,
    /// Fission's flags for a Kubernetes Ingress to the route: accepted, and
    /// said to do nothing (the router is the way in; see `fusion up`).
    #[arg(long = "createingress", hide = true)]
    create_ingress: bool,
    #[arg(
        long = "ingressrule",
        alias = "ingressannotation",
        alias = "ingresstls",
        hide = true,
        value_name = "VALUE"
    )]
    ingress: Vec<String>,
}

/// A route's name for `create`, where it may be left out.
#[derive(Args)]
pub(super) struct OptionalName {
    /// The route's name; made from the URL when absent (`/users/{id}` ->
    /// `users-id`).
    #[arg(value_name = "NAME")]
    positional: Option<String>,
    /// The route's name (as the positional NAME).
    #[arg(long = "name", value_name = "NAME", conflicts_with = "positional")]
    name: Option<String>,
}

#[derive(Subcommand)]
pub(super) enum RouteVerb {
    /// Create a route: requests to a URL (or below a prefix) go to a function
    /// or a workflow.
    Create {
        #[command(flatten)]
        name: OptionalName,
        #[command(flatten)]
        fields: RouteFields,
        #[command(flatten)]
        spec: SpecOpt,
    },
    /// Show a route.
    Get {
        #[command(flatten)]
        name: Name,
    },
    /// List the routes.
    List {
        /// Only the routes to this function (or with it among their weights).
        #[arg(long = "function", value_name = "FUNCTION")]
        function: Option<String>,
        #[command(flatten)]
        scope: super::AllNamespaces,
    },
    /// Change a route; the flags given replace those fields only.
    Update {
        #[command(flatten)]
        name: Name,
        #[command(flatten)]
        fields: RouteFields,
    },
    /// Delete a route, or with --function every route to a function.
    Delete {
        /// The route's name (or give it as --name NAME).
        #[arg(value_name = "NAME", required_unless_present_any = ["name", "function"])]
        positional: Option<String>,
        /// The route's name (as the positional NAME).
        #[arg(long = "name", value_name = "NAME", conflicts_with = "positional")]
        name: Option<String>,
        /// Delete every route whose one target is this function instead, as
        /// Fission's `httptrigger delete --function`; a route that shares its
        /// requests between it and others is left, and said.
        #[arg(long = "function", value_name = "FUNCTION", conflicts_with_all = ["positional", "name"])]
        function: Option<String>,
        #[command(flatten)]
        missing: super::IgnoreNotFound,
    },
}

pub(super) const ROUTES: Collection = Collection {
    path: "/v1/routes",
    noun: "route",
    columns: ROUTE_COLUMNS,
};

pub(super) const ROUTE_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("METHODS", "/methods"),
    ("URL", "/url"),
    ("PREFIX", "/prefix"),
    ("HOST", "/host"),
    ("FUNCTION", "/function|/function_weights"),
    ("WORKFLOW", "/workflow"),
    ("MODE", "/invocation_mode"),
];

/// Fission's Ingress flags: said to do nothing here.
fn warn_ingress(f: &RouteFields) {
    if f.create_ingress || !f.ingress.is_empty() {
        eprintln!("warning: --createingress and the --ingress* flags are Kubernetes-only: no Ingress is made; requests reach the route through Fusion's router");
    }
}

/// The methods of `--method` flags as a route stores them: upper case, each
/// once, in the order given; none for `ANY` (every method).
pub(super) fn methods(given: &[String]) -> Vec<String> {
    if given.iter().any(|m| m.eq_ignore_ascii_case("any")) {
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for m in given.iter().map(|m| m.to_uppercase()) {
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// A URL or prefix as Fission's CLI takes it: the leading `/` may be left out.
pub(super) fn rooted(path: String) -> String {
    if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    }
}

pub(super) fn merge_route(body: &mut Value, f: RouteFields) -> Result<()> {
    if let Some(u) = f.url.map(rooted) {
        body["url"] = json!(u);
        body.as_object_mut().map(|o| {
            o.remove("prefix");
            o.remove("keep_prefix")
        });
    }
    if let Some(keep) = f.keep_prefix {
        body["keep_prefix"] = json!(keep);
    }
    if let Some(p) = f.prefix.map(rooted) {
        body["prefix"] = json!(p);
        body.as_object_mut().map(|o| o.remove("url"));
    }
    if !f.methods.is_empty() {
        body["methods"] = json!(methods(&f.methods));
    }
    let target = |body: &mut Value, field: &str, value: Value| {
        if let Some(o) = body.as_object_mut() {
            for other in ["function", "workflow", "function_weights"] {
                o.remove(other);
            }
            o.insert(field.into(), value);
        }
    };
    match (f.function.as_slice(), f.weight.as_slice()) {
        ([], []) => {}
        ([], _) => return Err(anyhow!("--weight gives a --function's share: name the functions with it (--function v1 --weight 90 --function v2 --weight 10)")),
        ([fun], []) => target(body, "function", json!(fun)),
        (funs, weights) if funs.len() != weights.len() => {
            return Err(anyhow!(
                "{} functions and {} weights: give a --weight after each --function (--function v1 --weight 90 --function v2 --weight 10)",
                funs.len(),
                weights.len()
            ))
        }
        (funs, weights) => {
            let mut shares = serde_json::Map::new();
            for (fun, w) in funs.iter().zip(weights) {
                if shares.insert(fun.clone(), json!(w)).is_some() {
                    return Err(anyhow!("--function {fun} is given twice"));
                }
            }
            target(body, "function_weights", Value::Object(shares));
        }
    }
    if let Some(w) = f.workflow {
        target(body, "workflow", json!(w));
    }
    if let Some(h) = f.host {
        body["host"] = json!(h);
    }
    if let Some(mode) = f.invocation_mode {
        body["invocation_mode"] = json!(mode);
    }
    Ok(())
}

/// A trigger name derived from its URL or topic: `/users/{id}` -> `users-id`
/// (a parameter's pattern left out: `/users/{id:[0-9]+}` is `users-id` too).
pub(super) fn route_name(url: &str) -> String {
    let bare = triggers::table::Template::without_patterns(url);
    let mut name: String = bare
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let name = name.trim_matches('-');
    let name = if name.is_empty() { "root" } else { name };
    name.chars()
        .take(56)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

/// The name for a trigger made without one: derived from its URL or topic
/// (`route_name`) while no trigger of `collection` has it, else with a random
/// suffix (`users-id-3f9a1c`), so that two made without a name never clash
/// (`GET /a` and `POST /a`, `/a/{id}` and `/a-id`); Fission's CLI names them a
/// UUID. Written to a spec folder (`spec`), the name is free when no file of
/// the folder has it (`<file>-<name>.yaml`), and the server is not asked.
pub(super) async fn free_name(
    c: &Client,
    opts: &ClientOpts,
    collection: &Collection,
    base: String,
    spec: Option<(&save::Target, &str)>,
) -> Result<String> {
    let in_use = match spec {
        Some((target, file)) => target.dir.join(format!("{file}-{base}.yaml")).exists(),
        None => c
            .get_opt::<Value>(&collection.item(opts, &base))
            .await?
            .is_some(),
    };
    Ok(if in_use {
        format!("{base}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
    } else {
        base
    })
}

pub(super) async fn route_cmd(verb: RouteVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        RouteVerb::Create { name, fields, spec } => {
            warn_ingress(&fields);
            let url = fields
                .url
                .clone()
                .or(fields.prefix.clone())
                .ok_or_else(|| anyhow!("--url TEMPLATE or --prefix PATH is required"))?;
            let target = spec.target();
            let name = match name.positional.or(name.name) {
                Some(name) => name,
                None => {
                    let spec = target.as_ref().map(|t| (t, "route"));
                    free_name(&c, opts, &ROUTES, route_name(&url), spec).await?
                }
            };
            // GET unless told (Fission's CLI default).
            let mut body = json!({"name": name, "methods": ["GET"]});
            merge_route(&mut body, fields)?;
            if let Some(target) = target {
                let doc = save::resource(Kind::HttpTrigger, opts.ns(), &body)?;
                return save::save(&target, &format!("route-{name}.yaml"), &[doc]);
            }
            ROUTES.create_trigger(&c, opts, &body, "route").await
        }
        RouteVerb::Get { name } => ROUTES.show(&c, opts, &name.get()).await,
        RouteVerb::List {
            function: None,
            scope,
        } => ROUTES.list(&c, opts, &scope).await,
        RouteVerb::List {
            function: Some(f),
            scope,
        } => {
            ROUTES
                .list_where(&c, opts, &scope, |r| routes_to(r, &f))
                .await
        }
        RouteVerb::Update { name, fields } => {
            warn_ingress(&fields);
            let name = name.get();
            let mut body = ROUTES.current(&c, opts, &name).await?;
            merge_route(&mut body, fields)?;
            ROUTES
                .replace_trigger(&c, opts, &name, &body, "route")
                .await
        }
        RouteVerb::Delete {
            positional,
            name,
            function,
            missing,
        } => {
            let Some(f) = function else {
                let name = positional.or(name).unwrap_or_default();
                return missing.apply(opts, ROUTES.delete(&c, opts, &name).await);
            };
            // As Fission's `httptrigger delete --function`: the routes whose
            // one target is the function. A route that shares its requests
            // with others (a canary's) is left: deleting it would cut off the
            // functions it also serves.
            let mut said = super::output::DeletedList::new(opts);
            let mut found = false;
            for r in ROUTES.items(&c, opts).await? {
                let Some(name) = r["name"].as_str() else {
                    continue;
                };
                match sole_target(&r, &f) {
                    Target::Only => {
                        found = true;
                        // Gone meanwhile: what was asked for is done.
                        match ROUTES.delete_one_of(&c, opts, name, &mut said).await {
                            Err(e) if e.downcast_ref::<crate::client::NotFound>().is_some() => {}
                            other => other?,
                        }
                    }
                    Target::Among(others) => {
                        found = true;
                        eprintln!(
                            "route {name}: its split also sends traffic to {}: left; change its weights (fusion route update {name} --function ...) or delete it by name",
                            others.join(", ")
                        );
                    }
                    Target::Not => {}
                }
            }
            if !found {
                eprintln!("no route goes to function {f}");
            }
            said.finish();
            Ok(())
        }
    }
}

/// How a route's requests reach function `f`.
enum Target {
    /// It is the route's one target.
    Only,
    /// It shares the route's requests with these functions.
    Among(Vec<String>),
    /// It gets none of them.
    Not,
}

fn sole_target(r: &Value, f: &str) -> Target {
    if r["function"] == f {
        return Target::Only;
    }
    match r["function_weights"].as_object() {
        Some(w) if w.contains_key(f) => {
            let others: Vec<String> = w.keys().filter(|k| *k != f).cloned().collect();
            if others.is_empty() {
                Target::Only
            } else {
                Target::Among(others)
            }
        }
        _ => Target::Not,
    }
}

/// Whether route `r` sends requests to function `f` (alone, or among its
/// weighted functions).
fn routes_to(r: &Value, f: &str) -> bool {
    r["function"] == f || r["function_weights"].get(f).is_some()
}

#[cfg(test)]
mod tests {
    use super::route_name;

    #[test]
    fn route_names_from_urls() {
        assert_eq!(route_name("/users/{id}"), "users-id");
        assert_eq!(route_name("/hello/{id:[0-9]+}"), "hello-id");
        assert_eq!(route_name("/v{ver:[0-9]{2}}/x"), "v-ver-x");
        assert_eq!(route_name("/{file}.{ext}"), "file-ext");
        assert_eq!(route_name("/"), "root");
        assert_eq!(route_name("/Hello_World"), "hello-world");
        assert!(route_name(&"/x".repeat(100)).len() <= 56);
    }
}
