//! `fusion route` (alias `httptrigger`): HTTP triggers, URLs to functions and workflows.

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::output::Collection;
use super::ClientOpts;

#[derive(Args)]
pub(super) struct RouteFields {
    /// A URL template with {params}, matched exactly.
    #[arg(long)]
    url: Option<String>,
    /// A path prefix.
    #[arg(long, conflicts_with = "url")]
    prefix: Option<String>,
    /// Methods (repeatable); none means all.
    #[arg(long = "method")]
    methods: Vec<String>,
    /// The target function.
    #[arg(long)]
    function: Option<String>,
    /// Or the target workflow.
    #[arg(long, conflicts_with = "function")]
    workflow: Option<String>,
    #[arg(long)]
    host: Option<String>,
}

#[derive(Subcommand)]
pub(super) enum RouteVerb {
    Create {
        /// Generated from the URL when absent.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        fields: RouteFields,
    },
    Get {
        #[arg(long)]
        name: String,
    },
    List,
    Update {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: RouteFields,
    },
    Delete {
        #[arg(long)]
        name: String,
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
    ("FUNCTION", "/function"),
    ("WORKFLOW", "/workflow"),
];

pub(super) fn merge_route(body: &mut Value, f: RouteFields) {
    if let Some(u) = f.url {
        body["url"] = json!(u);
        body.as_object_mut().map(|o| o.remove("prefix"));
    }
    if let Some(p) = f.prefix {
        body["prefix"] = json!(p);
        body.as_object_mut().map(|o| o.remove("url"));
    }
    if !f.methods.is_empty() {
        body["methods"] = json!(f
            .methods
            .iter()
            .map(|m| m.to_uppercase())
            .collect::<Vec<_>>());
    }
    if let Some(fun) = f.function {
        body["function"] = json!(fun);
        body.as_object_mut().map(|o| o.remove("workflow"));
    }
    if let Some(w) = f.workflow {
        body["workflow"] = json!(w);
        body.as_object_mut().map(|o| o.remove("function"));
    }
    if let Some(h) = f.host {
        body["host"] = json!(h);
    }
}

/// A route name derived from its URL: `/users/{id}` -> `users-id`.
pub(super) fn route_name(url: &str) -> String {
    let mut name: String = url
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
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

pub(super) async fn route_cmd(verb: RouteVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        RouteVerb::Create { name, fields } => {
            let url = fields
                .url
                .clone()
                .or(fields.prefix.clone())
                .ok_or_else(|| anyhow!("--url or --prefix is required"))?;
            let name = name.unwrap_or_else(|| route_name(&url));
            let mut body = json!({"name": name});
            merge_route(&mut body, fields);
            ROUTES.create(&c, opts, &body).await
        }
        RouteVerb::Get { name } => ROUTES.show(&c, opts, &name).await,
        RouteVerb::List => ROUTES.list(&c, opts).await,
        RouteVerb::Update { name, fields } => {
            let mut body = ROUTES.current(&c, &name).await?;
            merge_route(&mut body, fields);
            ROUTES.replace(&c, opts, &name, &body).await
        }
        RouteVerb::Delete { name } => ROUTES.delete(&c, &name).await,
    }
}

#[cfg(test)]
mod tests {
    use super::route_name;

    #[test]
    fn route_names_from_urls() {
        assert_eq!(route_name("/users/{id}"), "users-id");
        assert_eq!(route_name("/"), "root");
        assert_eq!(route_name("/Hello_World"), "hello-world");
    }
}
