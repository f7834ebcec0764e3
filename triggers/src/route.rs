//! The HTTP trigger resource (a route): which requests reach which function or
//! workflow, and its validation.

use std::collections::BTreeMap;

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
    /// Or functions that share the route's requests by weight, as Fission's
    /// `function-weights` (a canary: `{"v1": 90, "v2": 10}`): each request
    /// goes to one, picked at random in proportion; the weights add up to 100.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub function_weights: BTreeMap<String, u32>,
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
        // A trailing or doubled slash does not change what a prefix matches.
        let prefix = |p: &Option<String>| {
            p.as_deref().map(|p| {
                let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
                format!("/{}", parts.join("/"))
            })
        };
        same_paths(&self.url, &other.url)
            && prefix(&self.prefix) == prefix(&other.prefix)
            && match (&self.host, &other.host) {
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                (a, b) => a == b,
            }
            && (self.methods.is_empty()
                || other.methods.is_empty()
                || self.methods.iter().any(|m| other.methods.contains(m)))
    }

    /// The key of the function it targets, in the route's namespace (not
    /// for a route that shares its requests between functions).
    pub fn function_key(&self) -> Option<String> {
        self.function
            .as_deref()
            .map(|f| qualified(&self.namespace, f))
    }

    /// The keys of every function its requests may reach.
    pub fn function_keys(&self) -> Vec<String> {
        self.function
            .iter()
            .chain(self.function_weights.keys())
            .map(|f| qualified(&self.namespace, f))
            .collect()
    }

    /// Spellings that mean the same written one way: an empty host is no
    /// host (any host matches).
    pub fn normalize(&mut self) {
        if let Some(h) = &self.host {
            let h = h.trim();
            self.host = (!h.is_empty()).then(|| h.to_string());
        }
    }

    pub fn validate(&self) -> Result<()> {
        validate_name("route", &self.name)?;
        validate_name("namespace", &self.namespace)?;
        if let Some(h) = &self.host {
            check_host(h)?;
        }
        let weighted = !self.function_weights.is_empty();
        match (&self.function, &self.workflow, weighted) {
            (Some(_), Some(_), _) => {
                return Err(Error::Invalid(
                    "route: target either a function or a workflow, not both".into(),
                ))
            }
            (Some(_), None, true) | (None, Some(_), true) => {
                return Err(Error::Invalid(
                    "route: function_weights names the route's functions: give no function or workflow beside them".into(),
                ))
            }
            (None, None, false) => {
                return Err(Error::Invalid(
                    "route: a target function (--function) or workflow (--workflow) is required"
                        .into(),
                ))
            }
            _ => {}
        }
        if weighted {
            for f in self.function_weights.keys() {
                validate_name("function", f)?;
            }
            let total: u64 = self.function_weights.values().map(|w| u64::from(*w)).sum();
            if total != 100 {
                return Err(Error::Invalid(format!(
                    "route: the function weights add up to {total}; they must add up to 100 (as Fission's)"
                )));
            }
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
            check_invocation_mode(mode)?;
        }
        for m in &self.methods {
            check_method(m)?;
        }
        Ok(())
    }
}

/// A route's `host`, as `Route::validate` checks it (also field by field,
/// where a document gives each its place).
pub fn check_host(h: &str) -> Result<()> {
    if valid_host(h) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "route: host {h:?} is not a host as a request's Host header names it \
         (NAME, matching it at any port, or NAME:PORT, e.g. api.example.com or \
         127.0.0.1:8888; empty for any host)"
    )))
}

/// One of a route's `methods`.
pub fn check_method(m: &str) -> Result<()> {
    if matches!(
        m,
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS"
    ) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "route: unknown method {m:?}: use GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS"
    )))
}

/// A route's `invocation_mode`.
pub fn check_invocation_mode(mode: &str) -> Result<()> {
    if matches!(mode, "sync" | "async" | "sync-only") {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "route: invocation_mode {mode:?}: use sync, async or sync-only"
    )))
}

/// Whether `h` is a host a `Host` header can name: a DNS name or IPv4
/// address, or an IPv6 address in brackets, with an optional port.
fn valid_host(h: &str) -> bool {
    let port_ok = |p: Option<&str>| p.is_none_or(|p| p.parse::<u16>().is_ok());
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split_once(']').is_some_and(|(v6, after)| {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
                && (after.is_empty() || port_ok(after.strip_prefix(':').or(Some(""))))
        });
    }
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    port_ok(port)
        && !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::{valid_host, Route};
    use serde_json::json;

    /// A canary route names its functions and weights only, adding up to 100.
    #[test]
    fn function_weights_add_up_to_100_and_stand_alone() {
        let route = |extra: serde_json::Value| {
            let mut r = json!({"name": "r", "url": "/r"});
            r.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<Route>(r).unwrap().validate()
        };
        route(json!({"function_weights": {"v1": 90, "v2": 10}})).unwrap();
        route(json!({"function_weights": {"v1": 100, "v2": 0}})).unwrap();
        let err = |extra| route(extra).unwrap_err().to_string();
        assert!(err(json!({"function_weights": {"v1": 90, "v2": 20}}))
            .contains("add up to 110; they must add up to 100"),);
        assert!(
            err(json!({"function_weights": {"v1": 100}, "function": "v1"}))
                .contains("give no function or workflow beside them")
        );
        assert!(err(json!({"function_weights": {"../x": 100}})).contains("function"));
    }

    /// Prefixes that differ by a trailing or doubled slash match the same
    /// requests: a second such route would never be reached.
    #[test]
    fn prefixes_that_differ_by_a_slash_answer_as_one() {
        let route = |prefix: &str| {
            serde_json::from_value::<Route>(json!({"name": "r", "prefix": prefix, "function": "f"}))
                .unwrap()
        };
        for (a, b) in [
            ("/api", "/api/"),
            ("/q", "//q"),
            ("/p/", "/p"),
            ("/a//b/", "/a/b"),
        ] {
            assert!(route(a).answers_as(&route(b)), "{a} {b}");
        }
        assert!(!route("/api").answers_as(&route("/apix")));
        assert!(!route("/api").answers_as(&route("/api/v2")));
    }

    #[test]
    fn hosts_are_names_or_addresses_with_an_optional_port() {
        for ok in [
            "example.com",
            "API.Example.com:8080",
            "127.0.0.1:8888",
            "localhost",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "bad host!",
            "example.com:",
            "example.com:99999",
            "a..b",
            "[::1",
            "[nope]",
            "[::1]x",
            "http://example.com",
            "example.com/path",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}
