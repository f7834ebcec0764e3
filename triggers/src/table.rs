//! Route matching: URL templates with `{params}`, path prefixes, methods and hosts.
//! Pure; the router keeps a `RouteTable` built from the stored routes.

use pool_manager::{Error, Result};

use crate::invoke::Target;
use crate::route::Route;

/// A parsed URL template: literal segments and `{name}` parameters.
///
/// A template whose parameters are each a whole segment without a pattern
/// (`/users/{id}`) is matched segment by segment. Any other (a pattern,
/// `{id:[0-9]+}`, `{path:.*}`; a parameter inside a segment, `/v{ver}`,
/// `/{name}.{ext}`) is matched as gorilla/mux in Fission's router matches it:
/// one regular expression over the whole path, where a parameter without a
/// pattern is `[^/]+` and a pattern may span segments (`{path:.*}` takes
/// `a/b/c`, or nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The template's segments: what it is matched by in the first case;
    /// in the second, what ranks it among others (a segment holding a
    /// parameter counts as one).
    segments: Vec<Segment>,
    whole: Option<WholePath>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// A parameter, and the pattern its segment must match whole, if any.
    Param(String, Option<Pattern>),
}

/// A parameter's pattern (`{id:[0-9]+}`, as gorilla/mux in Fission's router).
#[derive(Debug, Clone)]
struct Pattern {
    source: String,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// A template matched as one regular expression over the decoded path; its
/// parameters are the groups `p0`, `p1`... in order.
#[derive(Debug, Clone)]
struct WholePath {
    re: regex::Regex,
    names: Vec<String>,
    /// The group of each parameter, in `names`' order.
    groups: Vec<usize>,
}

impl PartialEq for WholePath {
    // The expression says which paths it takes; the names are not in it.
    fn eq(&self, other: &WholePath) -> bool {
        self.re.as_str() == other.re.as_str()
    }
}

impl Eq for WholePath {}

/// A piece of a template: text, or a parameter with its pattern.
enum Part<'a> {
    Text(&'a str),
    Param(&'a str, Option<&'a str>),
}

/// The template's parts. A parameter ends at the `}` that balances its `{`,
/// so a pattern may hold braces of its own (`{id:[0-9]{3}}`), as gorilla/mux
/// reads them.
fn parts_of(url: &str) -> Result<Vec<Part<'_>>> {
    let bytes = url.as_bytes();
    let mut parts = Vec::new();
    let mut text = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                let mut depth = 0usize;
                let mut close = None;
                for (j, b) in bytes.iter().enumerate().skip(i) {
                    match b {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                close = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let close = close.ok_or_else(|| {
                    Error::Invalid(format!(
                        "route url {url:?}: the parameter at {:?} has no closing '}}'",
                        &url[i..]
                    ))
                })?;
                if text < i {
                    parts.push(Part::Text(&url[text..i]));
                }
                let inner = &url[i + 1..close];
                parts.push(match inner.split_once(':') {
                    Some((name, pattern)) => Part::Param(name, Some(pattern)),
                    None => Part::Param(inner, None),
                });
                i = close + 1;
                text = i;
            }
            b'}' => {
                return Err(Error::Invalid(format!(
                    "route url {url:?}: a '}}' that closes no parameter"
                )))
            }
            _ => i += 1,
        }
    }
    if text < bytes.len() {
        parts.push(Part::Text(&url[text..]));
    }
    Ok(parts)
}

/// A pattern's regular expression, or the one-line error that says why not.
fn compile(url: &str, name: &str, source: &str, anchored: &str) -> Result<regex::Regex> {
    regex::Regex::new(anchored).map_err(|e| {
        // The regex crate draws the place over lines; its last line says
        // what is wrong.
        let text = e.to_string();
        let why = text.lines().last().unwrap_or_default();
        let why = why.strip_prefix("error: ").unwrap_or(why);
        Error::Invalid(format!(
            "route url {url:?}: parameter {name:?}: the pattern {source:?} is not a regular expression: {why}"
        ))
    })
}

impl Template {
    pub fn parse(url: &str) -> Result<Template> {
        if !url.starts_with('/') {
            return Err(Error::Invalid(format!(
                "route url {url:?} must start with '/'"
            )));
        }
        if url.starts_with("/fission-function/") || url == "/fission-function" {
            return Err(Error::Invalid(
                "route url: /fission-function/ is reserved for the built-in function routes".into(),
            ));
        }
        if url.contains(['?', '#']) {
            return Err(Error::Invalid(format!(
                "route url {url:?}: a route matches a path only, without a query or fragment"
            )));
        }
        if split(url).any(|seg| matches!(decoded(seg).as_ref(), "." | "..")) {
            return Err(Error::Invalid(format!(
                "route url {url:?}: `.` and `..` segments are resolved before routing (a request holding one is redirected), so no route can have one"
            )));
        }
        let parts = parts_of(url)?;
        let mut names: Vec<&str> = Vec::new();
        for part in &parts {
            let Part::Param(name, pattern) = part else {
                continue;
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(Error::Invalid(format!(
                    "route url {url:?}: parameter name {name:?} must be letters, digits, '_' or '-'"
                )));
            }
            if names.contains(name) {
                return Err(Error::Invalid(format!(
                    "route url {url:?}: parameter {name:?} appears twice"
                )));
            }
            if let Some(source) = pattern {
                compile(url, name, source, &format!("^(?:{})$", unanchored(source)))?;
            }
            names.push(name);
        }
        // Segment by segment when every parameter is a whole segment without
        // a pattern; the segments rank the template either way.
        let mut segments = Vec::new();
        let mut simple = true;
        for seg in split_keep_empty(url) {
            if seg.is_empty() {
                continue;
            }
            let seg_parts = parts_of(seg)?;
            let mut params = seg_parts.iter().filter_map(|p| match p {
                Part::Param(name, pattern) => Some((*name, pattern.as_deref())),
                Part::Text(_) => None,
            });
            match params.next() {
                None => segments.push(Segment::Literal(decoded(seg).into_owned())),
                Some((name, pattern)) => {
                    if pattern.is_some() || seg_parts.len() > 1 {
                        simple = false;
                    }
                    segments.push(Segment::Param(
                        name.to_string(),
                        pattern.map(|p| Pattern {
                            source: p.to_string(),
                        }),
                    ));
                }
            }
        }
        if simple {
            return Ok(Template {
                segments,
                whole: None,
            });
        }
        let mut re = String::from("^");
        let mut i = 0;
        for part in &parts {
            match part {
                Part::Text(t) => re.push_str(&regex::escape(&decoded(t))),
                Part::Param(_, pattern) => {
                    let pattern = pattern.map_or("[^/]+", unanchored);
                    re.push_str(&format!("(?P<p{i}>(?:{pattern}))"));
                    i += 1;
                }
            }
        }
        re.push('$');
        let name = names.first().copied().unwrap_or_default();
        let re = compile(url, name, &re, &re)?;
        let groups = (0..names.len())
            .map(|i| {
                let group = format!("p{i}");
                re.capture_names()
                    .position(|n| n == Some(group.as_str()))
                    .unwrap_or(0)
            })
            .collect();
        Ok(Template {
            segments,
            whole: Some(WholePath {
                re,
                names: names.iter().map(|n| n.to_string()).collect(),
                groups,
            }),
        })
    }

    /// Whether the two templates take the same paths: the same literals in
    /// the same places, and parameters (whatever their names) in the same
    /// places.
    pub fn same_paths(&self, other: &Template) -> bool {
        if self.whole.is_some() || other.whole.is_some() {
            return self.whole == other.whole;
        }
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Param(_, a), Segment::Param(_, b)) => a == b,
                    _ => false,
                })
    }

    /// Matches a whole path; returns the parameters in template order.
    pub fn match_exact(&self, path: &str) -> Option<Vec<(String, String)>> {
        if let Some(whole) = &self.whole {
            let path = decoded(path);
            // As written; else without repeated slashes or a trailing one, as
            // the other templates take paths.
            let tidy: String;
            let caps = match whole.re.captures(&path) {
                Some(caps) => caps,
                None => {
                    tidy = tidied(&path)?;
                    whole.re.captures(&tidy)?
                }
            };
            return Some(
                whole
                    .names
                    .iter()
                    .zip(&whole.groups)
                    .map(|(name, &group)| {
                        let value = caps.get(group).map_or("", |m| m.as_str());
                        (name.clone(), value.to_string())
                    })
                    .collect(),
            );
        }
        let mut params = Vec::new();
        let mut parts = split(path);
        for seg in &self.segments {
            let part = parts.next()?;
            let part = decoded(part);
            match seg {
                Segment::Literal(l) if *l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name, _) => params.push((name.clone(), part.into_owned())),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(params)
    }

    /// The template with its parameters' patterns left out
    /// (`/users/{id:[0-9]+}` is `/users/{id}`); one that does not parse, as
    /// it is.
    pub fn without_patterns(url: &str) -> String {
        let Ok(parts) = parts_of(url) else {
            return url.to_string();
        };
        parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => (*t).to_string(),
                Part::Param(name, _) => format!("{{{name}}}"),
            })
            .collect()
    }

    /// A path the template takes, for a hint to try it (`fusion up`): each
    /// parameter filled with the first of a few plain values its pattern
    /// takes, or none when no such value fits.
    pub fn example(url: &str) -> Option<String> {
        let template = Template::parse(url).ok()?;
        const VALUES: [&str; 6] = ["world", "1", "42", "a", "txt", "x-1"];
        let mut path = String::new();
        for part in parts_of(url).ok()? {
            match part {
                Part::Text(t) => path.push_str(t),
                Part::Param(_, None) => path.push_str(VALUES[0]),
                Part::Param(_, Some(pattern)) => {
                    let re = regex::Regex::new(&format!("^(?:{pattern})$")).ok()?;
                    path.push_str(VALUES.into_iter().find(|v| re.is_match(v))?);
                }
            }
        }
        template.match_exact(&path).map(|_| path)
    }

    /// Matches when the path is the template's path or below it.
    pub fn match_prefix(&self, path: &str) -> bool {
        let mut parts = split(path);
        self.whole.is_none()
            && self.segments.iter().all(|seg| match (seg, parts.next()) {
                (Segment::Literal(l), Some(p)) => *l == decoded(p),
                _ => false,
            })
    }

    /// Whether a parameter's pattern may take more than one segment (`.*`,
    /// `[a-z/]+`): such a template is less specific than one of single
    /// segments with as many literals.
    fn spans(&self) -> bool {
        self.segments.iter().any(|s| match s {
            Segment::Param(_, Some(p)) => regex::Regex::new(&format!("^(?:{})$", p.source))
                .is_ok_and(|re| {
                    ["/", "a/b", "0/0", "A/B"]
                        .iter()
                        .any(|probe| re.is_match(probe))
                }),
            _ => false,
        })
    }

    /// Parameters with a pattern: more specific than those without.
    fn pattern_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Param(_, Some(_))))
            .count()
    }

    fn literal_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }
}

/// A pattern without the anchors gorilla/mux patterns may carry (`^[0-9]+$`):
/// it is matched in its place in the path, not against the whole of it.
fn unanchored(pattern: &str) -> &str {
    let p = pattern.strip_prefix('^').unwrap_or(pattern);
    match p.strip_suffix('$') {
        Some(rest) if !rest.ends_with('\\') => rest,
        _ => p,
    }
}

/// The path without repeated slashes or a trailing one, when it had any.
fn tidied(path: &str) -> Option<String> {
    let tidy = format!("/{}", split(path).collect::<Vec<_>>().join("/"));
    (tidy != path).then_some(tidy)
}

/// A template's segments as written, parameters' patterns kept whole (a
/// pattern's `/` does not end its segment).
fn split_keep_empty(url: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, b) in url.bytes().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b'/' if depth == 0 => {
                out.push(&url[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&url[start..]);
    out
}

/// A path segment as its URL means it (`%20` a space, `%2F` a slash within
/// the segment): what templates are matched against and parameters carry,
/// as Fission's router gives them.
fn decoded(segment: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// Where what `path` holds after its first `n` segments (as `split` counts
/// them) starts, at the `/` that follows them; none when nothing does.
fn after_segments(path: &str, n: usize) -> Option<usize> {
    let mut rest = path;
    for _ in 0..n {
        rest = rest.trim_start_matches('/');
        rest = rest.find('/').map_or("", |i| &rest[i..]);
    }
    (!rest.is_empty()).then(|| path.len() - rest.len())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub route: String,
    pub target: Target,
    pub params: Vec<(String, String)>,
    /// The route makes every request an asynchronous call.
    pub asynchronous: bool,
    /// The route answers every request itself, whatever its headers ask.
    pub synchronous: bool,
    /// Where in the request's path the path its function is sent starts, as
    /// Fission's router sends it: none (`/`) for a `url` route, what is below
    /// the prefix for a prefix route (all of it with `keep_prefix`). See
    /// [`RouteMatch::sent`].
    pub sent_from: Option<usize>,
}

impl RouteMatch {
    /// The path the function is sent, of the request's `path` (the one
    /// matched): a slice of it, or `/`.
    pub fn sent<'p>(&self, path: &'p str) -> &'p str {
        self.sent_from.map_or("/", |i| &path[i..])
    }
}

struct Entry {
    route: Route,
    template: Template,
    prefix: bool,
}

impl Entry {
    /// The URL parameters when the route takes `path` at `host`, whatever the
    /// method. Host names compare without case and without the final dot of
    /// a fully qualified name (`example.com.`); a route's host without a
    /// port takes the name at any port, one with a port only that port.
    fn matches(&self, host: Option<&str>, path: &str) -> Option<Vec<(String, String)>> {
        if let Some(want) = &self.route.host {
            let (want_name, want_port) = split_host(want);
            let (got_name, got_port) = split_host(host?);
            fn bare(name: &str) -> &str {
                name.strip_suffix('.').unwrap_or(name)
            }
            if !bare(got_name).eq_ignore_ascii_case(bare(want_name))
                || (want_port.is_some() && got_port != want_port)
            {
                return None;
            }
        }
        if self.prefix {
            self.template.match_prefix(path).then(Vec::new)
        } else {
            self.template.match_exact(path)
        }
    }
}

/// A Host header's name and port: `example.com:8080`, `[::1]:8080`.
pub fn split_host(h: &str) -> (&str, Option<&str>) {
    let end = if h.starts_with('[') {
        h.find(']').map_or(h.len(), |i| i + 1)
    } else {
        h.find(':').unwrap_or(h.len())
    };
    let (name, rest) = h.split_at(end);
    (name, rest.strip_prefix(':'))
}

/// All routes, ordered so that the most specific one wins: exact templates before
/// prefixes, more literal segments first, then longer templates, then by name.
#[derive(Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
}

impl RouteTable {
    pub fn new(routes: impl IntoIterator<Item = Route>) -> RouteTable {
        let mut entries: Vec<Entry> = routes
            .into_iter()
            .filter_map(|route| {
                let (raw, prefix) = match (&route.url, &route.prefix) {
                    (Some(u), _) => (u.clone(), false),
                    (None, Some(p)) => (p.clone(), true),
                    (None, None) => return None,
                };
                let template = match Template::parse(&raw) {
                    Ok(t) => t,
                    Err(e) => {
                        // Stored by an earlier version that read it otherwise.
                        tracing::warn!(route = %route.name, error = %e, "a stored route's URL does not parse: it takes no requests until it is updated");
                        return None;
                    }
                };
                Some(Entry {
                    route,
                    template,
                    prefix,
                })
            })
            .collect();
        entries.sort_by_cached_key(|e| {
            use std::cmp::Reverse;
            (
                e.prefix,
                Reverse(e.route.host.is_some()),
                Reverse(e.template.literal_count()),
                e.template.spans(),
                Reverse(e.template.segments.len()),
                Reverse(e.template.pattern_count()),
                e.route.name.clone(),
            )
        });
        RouteTable { entries }
    }

    /// The methods the routes of `path` (at `host`) take, when `find` found
    /// none for the request's: a 405 names them (empty: no route, a 404).
    pub fn allowed(&self, host: Option<&str>, path: &str) -> Vec<String> {
        let mut methods: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.matches(host, path).is_some())
            .flat_map(|e| e.route.methods.iter().cloned())
            .collect();
        methods.sort();
        methods.dedup();
        methods
    }

    pub fn find(&self, method: &str, host: Option<&str>, path: &str) -> Option<RouteMatch> {
        self.entries.iter().find_map(|e| {
            if !e.route.methods.is_empty() && !e.route.methods.iter().any(|m| m == method) {
                return None;
            }
            let params = e.matches(host, path)?;
            let target = match (&e.route.function, &e.route.workflow) {
                (Some(_), _) => Target::Function(e.route.function_key().unwrap_or_default()),
                (None, Some(w)) => Target::Workflow(w.clone()),
                (None, None) => {
                    let weights = &e.route.function_weights;
                    let f = weighted_pick(weights, rand::random_range(0..100))?;
                    Target::Function(pool_manager::resources::qualified(&e.route.namespace, f))
                }
            };
            let sent_from = match (e.prefix, e.route.keep_prefix) {
                (false, _) => None,
                (true, true) => Some(0),
                (true, false) => after_segments(path, e.template.segments.len()),
            };
            Some(RouteMatch {
                route: e.route.name.clone(),
                target,
                params,
                asynchronous: e.route.is_async(),
                synchronous: e.route.invocation_mode.as_deref() == Some("sync-only"),
                sent_from,
            })
        })
    }
}

/// The function a roll in `0..100` lands on: each takes as many of the
/// hundred as its weight, in the order of their names.
fn weighted_pick(weights: &std::collections::BTreeMap<String, u32>, roll: u32) -> Option<&str> {
    let mut upto = 0;
    weights.iter().find_map(|(f, w)| {
        upto += w;
        (roll < upto).then_some(f.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(name: &str, url: Option<&str>, prefix: Option<&str>, methods: &[&str]) -> Route {
        Route {
            name: name.into(),
            namespace: "default".into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            url: url.map(String::from),
            prefix: prefix.map(String::from),
            host: None,
            function: Some(format!("fn-{name}")),
            workflow: None,
            function_weights: Default::default(),
            invocation_mode: None,
            keep_prefix: false,
        }
    }

    /// Each function takes as many rolls of the hundred as its weight; one of
    /// weight 0 none.
    #[test]
    fn weights_share_the_rolls_in_proportion() {
        let weights = [
            ("v1".to_string(), 90),
            ("v2".to_string(), 10),
            ("v3".to_string(), 0),
        ]
        .into_iter()
        .collect();
        let picks: Vec<&str> = (0..100)
            .map(|roll| weighted_pick(&weights, roll).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|f| **f == "v1").count(), 90);
        assert_eq!(picks.iter().filter(|f| **f == "v2").count(), 10);
        assert!(!picks.contains(&"v3"));
        // Through the table, a route's requests go to its functions only.
        let mut r = route("canary", Some("/c"), None, &[]);
        r.function = None;
        r.function_weights = [("v1".to_string(), 50), ("v2".to_string(), 50)]
            .into_iter()
            .collect();
        let table = RouteTable::new([r]);
        let seen: std::collections::BTreeSet<Target> = (0..200)
            .map(|_| table.find("GET", None, "/c").unwrap().target)
            .collect();
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [Target::Function("v1".into()), Target::Function("v2".into())]
        );
    }

    #[test]
    fn a_parameter_may_carry_a_pattern() {
        let t = Template::parse("/num/{id:[0-9]+}").unwrap();
        assert_eq!(
            t.match_exact("/num/42"),
            Some(vec![("id".into(), "42".into())])
        );
        assert_eq!(t.match_exact("/num/4x2"), None);
        // A pattern with braces of its own, matched against the decoded segment.
        let t = Template::parse("/code/{c:[a-z]{2}-[0-9]{2}}").unwrap();
        assert!(t.match_exact("/code/ab-12").is_some());
        assert!(t.match_exact("/code/abc-12").is_none());
        let e = Template::parse("/bad/{id:[0-9}").unwrap_err().to_string();
        assert!(e.contains("not a regular expression"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.ends_with("unclosed character class"), "{e}");
        // The patterned route is tried before the plain one at the same place.
        let table = RouteTable::new([
            route("plain", Some("/n/{name}"), None, &[]),
            route("digits", Some("/n/{id:[0-9]+}"), None, &[]),
        ]);
        assert_eq!(table.find("GET", None, "/n/7").unwrap().route, "digits");
        assert_eq!(table.find("GET", None, "/n/x").unwrap().route, "plain");
    }

    /// As gorilla/mux in Fission's router: a pattern may span segments, and
    /// a parameter may sit inside a segment.
    #[test]
    fn templates_match_as_fissions_router_matches_them() {
        let params = |tpl: &str, path: &str| {
            Template::parse(tpl).unwrap().match_exact(path).map(|ps| {
                ps.into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        };
        assert_eq!(
            params("/files/{path:.*}", "/files/a/b/c").as_deref(),
            Some("path=a/b/c")
        );
        assert_eq!(
            params("/files/{path:.*}", "/files/").as_deref(),
            Some("path=")
        );
        assert_eq!(params("/files/{path:.*}", "/files"), None);
        assert_eq!(
            params("/f/{rest:[a-z/]+}", "/f/ab/cd").as_deref(),
            Some("rest=ab/cd")
        );
        assert_eq!(params("/f/{rest:[a-z/]+}", "/f/ab/c9"), None);
        assert_eq!(
            params("/m/{a}.{ext}", "/m/x.y.json").as_deref(),
            Some("a=x.y ext=json")
        );
        assert_eq!(params("/m/{a}.{ext}", "/m/x/y.json"), None);
        assert_eq!(
            params("/v{ver:[0-9]+}/x", "/v12/x").as_deref(),
            Some("ver=12")
        );
        assert_eq!(
            params("/n/{id:[0-9]{3}}", "/n/123").as_deref(),
            Some("id=123")
        );
        assert_eq!(params("/n/{id:[0-9]{3}}", "/n/1234"), None);
        // Anchors in a pattern mean its own place, as before.
        assert_eq!(
            params("/n/{id:^[0-9]+$}", "/n/42").as_deref(),
            Some("id=42")
        );
        // A trailing or doubled slash, as the other templates take them.
        assert_eq!(params("/n/{id:[0-9]+}", "/n/42/").as_deref(), Some("id=42"));
        assert_eq!(
            params("/n/{id:[0-9]+}", "//n//42").as_deref(),
            Some("id=42")
        );
        // Decoded before matching, as the path means it.
        assert_eq!(
            params("/a b/{f}.txt", "/a%20b/x%20y.txt").as_deref(),
            Some("f=x y")
        );
        // A catch-all ranks after the literal and plain routes beside it.
        let table = RouteTable::new([
            route("all", Some("/files/{path:.*}"), None, &[]),
            route("readme", Some("/files/readme"), None, &[]),
            route("one", Some("/files/{name}"), None, &[]),
        ]);
        assert_eq!(
            table.find("GET", None, "/files/readme").unwrap().route,
            "readme"
        );
        assert_eq!(table.find("GET", None, "/files/x").unwrap().route, "one");
        assert_eq!(table.find("GET", None, "/files/x/y").unwrap().route, "all");
        // The same paths whatever the names.
        let t = |u: &str| Template::parse(u).unwrap();
        assert!(t("/f/{a:.*}").same_paths(&t("/f/{b:.*}")));
        assert!(!t("/f/{a:.*}").same_paths(&t("/f/{a:.+}")));
        assert!(!t("/f/{a:.*}").same_paths(&t("/f/{a}")));
    }

    /// As Fission's router: a url route's function is sent `/`, a prefix
    /// route's what is below the prefix, or all of it with `keep_prefix`.
    #[test]
    fn the_path_a_function_is_sent() {
        let mut kept = route("kept", None, Some("/v2/api"), &[]);
        kept.keep_prefix = true;
        let table = RouteTable::new([
            route("user", Some("/users/{id}"), None, &[]),
            route("api", None, Some("/api/"), &[]),
            kept,
        ]);
        let sent = |path: &str| {
            table
                .find("GET", None, path)
                .unwrap()
                .sent(path)
                .to_string()
        };
        assert_eq!(sent("/users/42"), "/");
        assert_eq!(sent("/api/v1/things"), "/v1/things");
        assert_eq!(sent("/api"), "/");
        assert_eq!(sent("/api/"), "/");
        assert_eq!(sent("//api//x/"), "//x/");
        // Matched decoded, cut by segment.
        assert_eq!(sent("/%61pi/x%2Fy"), "/x%2Fy");
        assert_eq!(sent("/v2/api/x"), "/v2/api/x");
    }

    #[test]
    fn an_example_path_is_one_the_template_takes() {
        let ex = |url: &str| Template::example(url);
        assert_eq!(ex("/hello/{name}/x").as_deref(), Some("/hello/world/x"));
        assert_eq!(ex("/{file}.{ext}").as_deref(), Some("/world.world"));
        assert_eq!(ex("/v{ver:[0-9]+}/x").as_deref(), Some("/v1/x"));
        assert_eq!(ex("/hello/{id:[0-9]+}").as_deref(), Some("/hello/1"));
        assert_eq!(ex("/files/{path:.*}").as_deref(), Some("/files/world"));
        assert_eq!(ex("/plain").as_deref(), Some("/plain"));
        // No plain value fits: no hint rather than a wrong one.
        assert_eq!(ex("/id/{id:[0-9a-f]{32}}"), None);
    }

    #[test]
    fn parameters_are_extracted() {
        let t = Template::parse("/users/{id}/posts/{post}").unwrap();
        assert_eq!(
            t.match_exact("/users/42/posts/7"),
            Some(vec![
                ("id".into(), "42".into()),
                ("post".into(), "7".into())
            ])
        );
        assert_eq!(t.match_exact("/users/42/posts"), None);
        assert_eq!(t.match_exact("/users/42/posts/7/x"), None);
    }

    #[test]
    fn segments_match_and_parameters_arrive_as_the_url_means_them() {
        let t = Template::parse("/ünï/a b/{id}").unwrap();
        assert_eq!(
            t.match_exact("/%C3%BCn%C3%AF/a%20b/x%2Fy%20z"),
            Some(vec![("id".into(), "x/y z".into())])
        );
        assert_eq!(
            Template::parse("/a%20b/{id}")
                .unwrap()
                .match_exact("/a%20b/1"),
            Some(vec![("id".into(), "1".into())])
        );
        assert!(Template::parse("/a b").unwrap().match_prefix("/a%20b/c"));
    }

    #[test]
    fn a_path_routed_for_other_methods_names_them() {
        let table = RouteTable::new(vec![
            route("get", Some("/x/{id}"), None, &["GET"]),
            route("post", Some("/x/{id}"), None, &["POST", "PUT"]),
            route("other", Some("/y"), None, &["GET"]),
        ]);
        assert!(table.find("DELETE", None, "/x/1").is_none());
        assert_eq!(table.allowed(None, "/x/1"), ["GET", "POST", "PUT"]);
        assert!(table.allowed(None, "/z").is_empty());
    }

    #[test]
    fn templates_that_differ_only_in_parameter_names_take_the_same_paths() {
        let t = |u: &str| Template::parse(u).unwrap();
        assert!(t("/p/{id}").same_paths(&t("/p/{name}")));
        assert!(t("/a b/{x}").same_paths(&t("/a%20b/{y}")));
        assert!(!t("/p/{id}").same_paths(&t("/p/id")));
        assert!(!t("/p/{id}").same_paths(&t("/p/{id}/x")));
    }

    #[test]
    fn hosts_match_without_case() {
        let mut r = route("h", Some("/x"), None, &[]);
        r.host = Some("Example.COM".into());
        let table = RouteTable::new(vec![r]);
        assert!(table.find("GET", Some("example.com:8888"), "/x").is_some());
        // A fully qualified name, with its final dot.
        assert!(table.find("GET", Some("example.com."), "/x").is_some());
        assert!(table.find("GET", Some("Example.com.:8888"), "/x").is_some());
        assert!(table.find("GET", Some("other.com"), "/x").is_none());
        assert!(table.find("GET", None, "/x").is_none());
        // A port in the route's host: that port only.
        let mut r = route("p", Some("/x"), None, &[]);
        r.host = Some("api.example.com:8080".into());
        let table = RouteTable::new(vec![r]);
        assert!(table
            .find("GET", Some("API.example.com:8080"), "/x")
            .is_some());
        assert!(table
            .find("GET", Some("api.example.com:9090"), "/x")
            .is_none());
        assert!(table.find("GET", Some("api.example.com"), "/x").is_none());
        // IPv6 in brackets, with and without a port.
        let mut r = route("v6", Some("/x"), None, &[]);
        r.host = Some("[::1]".into());
        let table = RouteTable::new(vec![r]);
        assert!(table.find("GET", Some("[::1]:8888"), "/x").is_some());
        assert!(table.find("GET", Some("[::2]:8888"), "/x").is_none());
        assert_eq!(split_host("[::1]:80"), ("[::1]", Some("80")));
        assert_eq!(split_host("a.b"), ("a.b", None));
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "users",
            "/a/{",
            "/a/{}",
            "/a/}",
            "/a/{id}/{id}",
            "/a/{x}.{x}",
            "/a/../b",
            "/a/%2e",
            "/r?x=1",
            "/r#top",
            "/fission-function/x",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exact_beats_prefix_and_literals_beat_params() {
        let table = RouteTable::new(vec![
            route("pre", None, Some("/api"), &[]),
            route("param", Some("/api/{x}"), None, &[]),
            route("lit", Some("/api/special"), None, &[]),
        ]);
        assert_eq!(
            table.find("GET", None, "/api/special").unwrap().route,
            "lit"
        );
        assert_eq!(
            table.find("GET", None, "/api/other").unwrap().route,
            "param"
        );
        assert_eq!(table.find("GET", None, "/api/a/b").unwrap().route, "pre");
        assert_eq!(table.find("GET", None, "/api").unwrap().route, "pre");
        assert!(table.find("GET", None, "/apix").is_none());
    }

    #[test]
    fn methods_and_hosts_filter() {
        let mut r = route("r", Some("/x"), None, &["POST"]);
        r.host = Some("example.test".into());
        let table = RouteTable::new(vec![r]);
        assert!(table.find("GET", Some("example.test"), "/x").is_none());
        assert!(table.find("POST", Some("other.test"), "/x").is_none());
        assert!(table
            .find("POST", Some("example.test:8888"), "/x")
            .is_some());
    }

    proptest! {
        #[test]
        fn a_template_matches_the_paths_it_generates(
            segs in proptest::collection::vec(("[a-z]{1,6}", any::<bool>()), 1..6),
            values in proptest::collection::vec("[a-zA-Z0-9_.~-]{1,8}", 6),
        ) {
            let mut tpl = String::new();
            let mut path = String::new();
            let mut expected = Vec::new();
            for (i, (s, is_param)) in segs.iter().enumerate() {
                if *is_param {
                    let name = format!("p{i}");
                    tpl.push_str(&format!("/{{{name}}}"));
                    path.push('/');
                    path.push_str(&values[i]);
                    expected.push((name, values[i].clone()));
                } else {
                    tpl.push('/');
                    tpl.push_str(s);
                    path.push('/');
                    path.push_str(s);
                }
            }
            let t = Template::parse(&tpl).unwrap();
            prop_assert_eq!(t.match_exact(&path), Some(expected));
            let longer = format!("{path}/extra");
            prop_assert_eq!(t.match_exact(&longer), None);
        }

        #[test]
        fn matching_never_panics(tpl in "(/[a-z{}]{0,5}){0,5}", path in "(/[a-z]{0,5}){0,6}") {
            if let Ok(t) = Template::parse(&tpl) {
                let _ = t.match_exact(&path);
                let _ = t.match_prefix(&path);
            }
        }
    }
}
