//! `GET /v1/pod-packages/{sha256}`: where a function pod's fetcher pulls the
//! package being staged on it. Outside the admin token: the only credential
//! is the pod's own (`Authorization: Bearer <credential>`), allowed exactly the
//! package the pool is staging on that pod, for as long as it stages it. A file
//! package is sent as it is, a directory as a tar stream; `.../files` sends the
//! function's secrets and configmaps staged with it as a tar. No or an unknown
//! credential answers 401, another package 403, both as JSON errors.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pool_manager::delivery::{self, FetchDenied};
use pool_manager::error::error_response;
use pool_manager::Error;

use std::path::PathBuf;
use std::sync::Arc;

use pool_manager::delivery::Credentials;
use pool_manager::PackageRef;

/// Finds a stored package on this machine (the pool's package store).
pub type Locate = Arc<dyn Fn(&PackageRef) -> pool_manager::Result<PathBuf> + Send + Sync>;

#[derive(Clone)]
pub struct PodPackages {
    pub credentials: Arc<Credentials>,
    pub locate: Locate,
}

pub fn routes(state: PodPackages) -> Router {
    Router::new()
        .route("/v1/pod-packages/{sha256}", get(fetch))
        .route("/v1/pod-packages/{sha256}/files", get(fetch_files))
        .with_state(state)
}

/// The bearer credential of a request, if it has one.
fn credential(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|c| !c.is_empty())
}

fn denied(e: &FetchDenied) -> Response {
    error_response(e.status(), e.code(), &e.to_string())
}

/// The secrets' and configmaps' files staged with the package, as a tar
/// stream (`secrets/<ns>/<name>/<key>`, `configs/...`), under the same
/// credential check.
async fn fetch_files(
    State(s): State<PodPackages>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Response {
    let files = match s.credentials.check_files(credential(&headers), &sha256) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(package = %sha256, "files fetch refused: {e}");
            return denied(&e);
        }
    };
    match delivery::tar_files(&files) {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, delivery::TAR_MEDIA_TYPE)],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn fetch(
    State(s): State<PodPackages>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Response {
    let package = match s.credentials.check(credential(&headers), &sha256) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(package = %sha256, "package fetch refused: {e}");
            return denied(&e);
        }
    };
    let path = match (s.locate)(&package) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let sent = tokio::task::spawn_blocking(move || {
        if path.is_dir() {
            delivery::tar_dir(&path).map(|b| (delivery::TAR_MEDIA_TYPE, b))
        } else {
            std::fs::read(&path)
                .map(|b| ("application/octet-stream", b))
                .map_err(|e| Error::Storage(format!("cannot read {}: {e}", path.display())))
        }
    })
    .await
    .unwrap_or_else(|e| Err(Error::Internal(e.to_string())));
    match sent {
        Ok((media_type, bytes)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, media_type)],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use pool_manager::PackageKind;
    use tower::ServiceExt;

    /// The endpoint over a package store of one file package and one directory.
    fn setup() -> (Router, Arc<Credentials>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.py"), "def main(): return 'hi'").unwrap();
        std::fs::create_dir(dir.path().join("tree")).unwrap();
        std::fs::write(dir.path().join("tree/main.py"), "x = 1").unwrap();
        let root = dir.path().to_path_buf();
        let credentials = Arc::new(Credentials::default());
        let app = routes(PodPackages {
            credentials: credentials.clone(),
            locate: Arc::new(move |p: &PackageRef| {
                Ok(match p.kind {
                    PackageKind::File => root.join("hello.py"),
                    _ => root.join("tree"),
                })
            }),
        });
        (app, credentials, dir)
    }

    fn package(sha: char, kind: PackageKind) -> PackageRef {
        PackageRef {
            sha256: sha.to_string().repeat(64),
            kind,
            filename: None,
        }
    }

    async fn get(
        app: &Router,
        sha: &str,
        credential: Option<&str>,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::get(format!("/v1/pod-packages/{sha}"));
        if let Some(c) = credential {
            req = req.header("authorization", format!("Bearer {c}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, body.to_vec())
    }

    fn error_code(body: &[u8]) -> String {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        v["error"]["code"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_pod_fetches_only_the_package_being_staged_on_it() {
        let (app, credentials, _dir) = setup();
        let (credential, digest) = delivery::mint_credential().unwrap();
        credentials.register(&digest, "fusion-py-abcde");
        let file = package('a', PackageKind::File);
        credentials.allow(&digest, &file, Vec::new());
        let (status, headers, body) = get(&app, &file.sha256, Some(&credential)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/octet-stream");
        assert_eq!(body, b"def main(): return 'hi'");
        // Another package: 403.
        let (status, _, body) = get(&app, &"b".repeat(64), Some(&credential)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(error_code(&body), "forbidden");
        // No credential, or one that is not a pod's: 401.
        let (status, _, body) = get(&app, &file.sha256, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&body), "unauthorized");
        let (status, _, _) = get(&app, &file.sha256, Some("not-a-pod")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // Once staged, not even its own package.
        credentials.revoke(&digest);
        let (status, _, _) = get(&app, &file.sha256, Some(&credential)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn a_directory_package_comes_as_a_tar_stream() {
        let (app, credentials, _dir) = setup();
        let (credential, digest) = delivery::mint_credential().unwrap();
        credentials.register(&digest, "pod");
        let tree = package('c', PackageKind::Archive);
        credentials.allow(
            &digest,
            &tree,
            vec![pool_manager::backend::StagedFile {
                path: "configs/default/app/mode".into(),
                contents: b"debug".to_vec(),
            }],
        );
        let (status, headers, body) = get(&app, &tree.sha256, Some(&credential)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], delivery::TAR_MEDIA_TYPE);
        let out = tempfile::tempdir().unwrap();
        delivery::unpack_tar(&body[..], out.path(), Default::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("main.py")).unwrap(),
            "x = 1"
        );
        // The function's configmap comes with it, under the same credential.
        let (status, _, body) =
            get(&app, &format!("{}/files", tree.sha256), Some(&credential)).await;
        assert_eq!(status, StatusCode::OK);
        delivery::unpack_files(&body, out.path(), Default::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("configs/default/app/mode")).unwrap(),
            "debug"
        );
        let (status, _, _) = get(
            &app,
            &format!("{}/files", "b".repeat(64)),
            Some(&credential),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) = get(&app, &format!("{}/files", tree.sha256), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // Anything but the staged package's digest is another package.
        let (status, _, body) = get(&app, "..%2F..%2Fetc", Some(&credential)).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }

    #[test]
    fn the_credential_is_a_bearer_token() {
        use axum::http::HeaderValue;
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(credential(&h), Some("abc"));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(credential(&h), None);
    }
}
