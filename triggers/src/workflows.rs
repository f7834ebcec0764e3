//! The engine as triggers see it: whether a workflow exists, and running one
//! for an HTTP request, with the URL its background runs are followed at.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::http::uri::Authority;
use axum::http::{header, Request, Response};
use engine::Engine;

/// The workflows triggers start: the engine, and where its runs are followed. A
/// workflow started in the background (202) is followed on the API listener, so
/// its `Location` is that listener's absolute URL (`/v1/runs/{id}` alone would
/// name a path the router does not have).
#[derive(Clone)]
pub struct Workflows {
    pub engine: Arc<Engine>,
    pub api: ApiListener,
}

/// Where the API listener answers: its scheme and bound address, and the URL
/// it is reached at from outside when one is configured (`--public-url`).
#[derive(Debug, Clone)]
pub struct ApiListener {
    pub scheme: &'static str,
    pub addr: SocketAddr,
    pub public: Option<String>,
}

impl ApiListener {
    /// The API's URL for the client of `request`: the public URL when one is
    /// set; else the listener's own address, or, when it listens on every
    /// interface, the host the client reached the router by (the request's
    /// authority or `Host`), with the API's port.
    pub fn base_for(&self, request: &Request<Body>) -> String {
        if let Some(url) = &self.public {
            return url.clone();
        }
        let port = self.addr.port();
        let host = if self.addr.ip().is_unspecified() {
            request
                .uri()
                .authority()
                .cloned()
                .or_else(|| {
                    request
                        .headers()
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .and_then(|h| h.parse::<Authority>().ok())
                })
                .map(|a| a.host().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".to_string())
        } else {
            match self.addr.ip() {
                IpAddr::V6(ip) => format!("[{ip}]"),
                IpAddr::V4(ip) => ip.to_string(),
            }
        };
        format!("{}://{host}:{port}", self.scheme)
    }
}

impl Workflows {
    pub fn exists(&self, name: &str) -> bool {
        self.engine.workflow_exists(name)
    }

    /// Runs workflow `name` with `request` as its invocation (synchronous, or
    /// 202 in the background when the request asks for it).
    pub async fn invoke(&self, name: &str, request: Request<Body>) -> Response<Body> {
        // Only a 202 names the API's URL: a synchronous call does not build it.
        let base = if engine::api::is_async(request.headers()) {
            self.api.base_for(&request)
        } else {
            String::new()
        };
        engine::invoke_http_at(self.engine.clone(), name, request, &base).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<Body> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn the_api_base_names_the_api_listener() {
        let on = |addr: &str| ApiListener {
            scheme: "http",
            addr: addr.parse().unwrap(),
            public: None,
        };
        let r = request("/fission-function/w", Some("fusion.example:8888"));
        assert_eq!(on("127.0.0.1:8889").base_for(&r), "http://127.0.0.1:8889");
        assert_eq!(on("[::1]:8889").base_for(&r), "http://[::1]:8889");
        // Listening everywhere: the host the client used, with the API's port.
        assert_eq!(
            on("0.0.0.0:8889").base_for(&r),
            "http://fusion.example:8889"
        );
        let v6 = request("/w", Some("[fd00::1]:8888"));
        assert_eq!(on("[::]:8889").base_for(&v6), "http://[fd00::1]:8889");
        let absolute = request("http://10.0.0.2:8888/w", None);
        assert_eq!(on("0.0.0.0:9").base_for(&absolute), "http://10.0.0.2:9");
        assert_eq!(
            on("0.0.0.0:9").base_for(&request("/w", None)),
            "http://127.0.0.1:9"
        );
        let tls = ApiListener {
            scheme: "https",
            addr: "127.0.0.1:1".parse().unwrap(),
            public: None,
        };
        assert_eq!(tls.base_for(&r), "https://127.0.0.1:1");
        // Behind a proxy: the configured public URL, whatever the request.
        let proxied = ApiListener {
            public: Some("https://fusion.example.com/api".into()),
            ..on("0.0.0.0:8889")
        };
        assert_eq!(proxied.base_for(&r), "https://fusion.example.com/api");
    }
}
