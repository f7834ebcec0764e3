//! The HTTP trigger resource (a route): which requests reach which function or
//! workflow, and its validation.

use serde::{Deserialize, Serialize};

use pool_manager::resources::{default_namespace, qualified, validate_name};
use pool_manager::{Error, Result};

/// An HTTP trigger: which requests reach which function or workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    /// Names are unique per namespace (`default` unless given); the target
    /// function is in the same namespace (a workflow is in `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Methods it answers; empty means every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// A URL template with `{params}`, matched exactly (`/users/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A path prefix: every path below it matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// `async`: every request through the route is an asynchronous call (a
    /// 202 at once), as Fission's `invocationMode`, for callers that cannot
    /// set a header (a third party's webhook); `sync` (the default) leaves it
    /// to the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_mode: Option<String>,
    /// A prefix route sends its function the whole path; without this, the
    /// path below the prefix (`/api/v1/x` through `/api` is `/v1/x`), as
    /// Fission's `keepPrefix`. A `url` route always sends `/`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_prefix: bool,
}

impl Route {
    /// Whether every request through the route is an asynchronous call.
    pub fn is_async(&self) -> bool {
        self.invocation_mode.as_deref() == Some("async")
    }

    pub fn key(&self) -> String {
        qualified(&self.namespace, &self.name)
    }

    /// Whether the two routes would answer the same requests: the same URL
    /// template up to its parameters' names (`/p/{id}` and `/p/{name}`), or
    /// the same prefix, for the same host and a method in common.
    pub fn answers_as(&self, other: &Route) -> bool {
        let same_paths = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => match (
                crate::table::Template::parse(a),
                crate::table::Template::parse(b),
            ) {
                (Ok(a), Ok(b)) => a.same_paths(&b),
                _ => a == b,
            },
            (a, b) => a == b,
        };
        same_paths(&self.url, &other.url)
            && self.prefix == other.prefix
            && match (&self.host, &other.host) {
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                (a, b) => a == b,
            }
            && (self.methods.is_empty()
                || other.methods.is_empty()
                || self.methods.iter().any(|m| other.methods.contains(m)))
    }

    /// The key of the function it targets, in the route's namespace.
    pub fn function_key(&self) -> Option<String> {
        self.function
            .as_deref()
            .map(|f| qualified(&self.namespace, f))
    }

    pub fn validate(&self) -> Result<()> {
        validate_name("route", &self.name)?;
        validate_name("namespace", &self.namespace)?;
        match (&self.function, &self.workflow) {
            (Some(_), Some(_)) => {
                return Err(Error::Invalid(
                    "route: target either a function or a workflow, not both".into(),
                ))
            }
            (None, None) => {
                return Err(Error::Invalid(
                    "route: a target function (--function) or workflow (--workflow) is required"
                        .into(),
                ))
            }
            _ => {}
        }
        match (&self.url, &self.prefix) {
            (Some(_), Some(_)) => {
                return Err(Error::Invalid(
                    "route: give either url or prefix, not both".into(),
                ))
            }
            (None, None) => return Err(Error::Invalid("route: url or prefix is required".into())),
            (Some(u), None) | (None, Some(u)) => crate::table::Template::parse(u)?,
        };
        if let Some(p) = &self.prefix {
            if p.contains('{') {
                return Err(Error::Invalid(
                    "route: a prefix cannot hold {params}".into(),
                ));
            }
        }
        if self.keep_prefix && self.prefix.is_none() {
            return Err(Error::Invalid(
                "route: keep_prefix applies to a prefix route (a url route's function is sent `/`)"
                    .into(),
            ));
        }
        if let Some(mode) = &self.invocation_mode {
            if !matches!(mode.as_str(), "sync" | "async" | "sync-only") {
                return Err(Error::Invalid(format!(
                    "route: invocation_mode {mode:?}: use sync, async or sync-only"
                )));
            }
        }
        for m in &self.methods {
            if !matches!(
                m.as_str(),
                "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS"
            ) {
                return Err(Error::Invalid(format!(
                    "route: unknown method {m:?}: use GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS"
                )));
            }
        }
        Ok(())
    }
}
