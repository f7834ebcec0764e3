//! `fusion fetcher`: the sidecar of every function pod (the kubernetes backend).
//! It listens for `POST /fetch {"package", "kind", "filename"}` from the pool,
//! pulls that package from Fusion's API (`FUSION_API_URL`) with the pod's own
//! credential (in the file `FUSION_FETCH_TOKEN_FILE` names, the pod's Secret;
//! or `FUSION_FETCH_TOKEN`), writes it under `<dir>/<sha256>/` (a file as
//! `<dir>/<sha256>/<filename>`, an archive unpacked there) and answers the
//! `filepath` the runtime loads. Nothing it is sent can make it write outside
//! that directory or fetch from anywhere else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pool_manager::delivery;
use pool_manager::error::error_response;
use pool_manager::package::{validate_filename, PackageLimits};
use pool_manager::Error;
use serde::Deserialize;

#[derive(Debug, Clone, clap::Args)]
pub struct FetcherArgs {
    /// Where the fetcher listens for the pool's requests.
    #[arg(long, env = "FUSION_FETCHER_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    /// The volume shared with the runtime (`/userfunc`).
    #[arg(long, env = "FUSION_FETCHER_DIR", default_value = "/userfunc")]
    pub dir: PathBuf,
    /// Where the function's secrets and configmaps go (`<root>/secrets`,
    /// `<root>/configs`: the volumes shared with the runtime).
    #[arg(long, env = "FUSION_FETCHER_FILES_ROOT", default_value = "/")]
    pub files_root: PathBuf,
    /// Fusion's API as this pod reaches it.
    #[arg(long, env = "FUSION_API_URL")]
    pub api_url: String,
    /// This pod's credential, or (as in a pod) the file holding it, the
    /// pod's Secret mounted in this container only.
    #[arg(
        long,
        env = "FUSION_FETCH_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub token: String,
    #[arg(long, env = "FUSION_FETCH_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

struct Fetcher {
    dir: PathBuf,
    files_root: PathBuf,
    api_url: String,
    token: String,
    http: reqwest::Client,
    limits: PackageLimits,
}

/// What the pool asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchRequest {
    package: String,
    kind: Kind,
    #[serde(default)]
    filename: Option<String>,
    /// Whether the function has secrets or configmaps to fetch too.
    #[serde(default)]
    files: bool,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    File,
    Archive,
}

pub async fn serve(args: FetcherArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let app = router(&args)?;
    tracing::info!(listen = %args.listen, dir = %args.dir.display(), "fetcher listening");
    axum::serve(listener, app).await?;
    Ok(())
}

/// The credential: the file's (trimmed) when one is given, else the value.
fn token(args: &FetcherArgs) -> anyhow::Result<String> {
    match &args.token_file {
        Some(path) => Ok(std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the credential file {}", path.display()))?
            .trim()
            .to_string()),
        None if args.token.is_empty() => {
            anyhow::bail!(
                "the fetcher needs its credential: FUSION_FETCH_TOKEN_FILE or FUSION_FETCH_TOKEN"
            )
        }
        None => Ok(args.token.clone()),
    }
}

fn router(args: &FetcherArgs) -> anyhow::Result<Router> {
    let api_url = args.api_url.trim_end_matches('/').to_string();
    anyhow::ensure!(
        api_url.starts_with("http://") || api_url.starts_with("https://"),
        "FUSION_API_URL must be an http(s) URL, not {api_url:?}"
    );
    let fetcher = Fetcher {
        dir: args.dir.clone(),
        files_root: args.files_root.clone(),
        api_url,
        token: token(args)?,
        http: reqwest::Client::new(),
        limits: PackageLimits::default(),
    };
    Ok(Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/fetch", post(fetch))
        .with_state(Arc::new(fetcher)))
}

async fn fetch(State(f): State<Arc<Fetcher>>, body: axum::body::Bytes) -> Response {
    match fetch_package(&f, &body).await {
        Ok(path) => Json(serde_json::json!({"filepath": path})).into_response(),
        Err(e) => {
            tracing::warn!("fetch failed: {e}");
            error_response(e.status(), e.code(), &e.to_string())
        }
    }
}

async fn fetch_package(f: &Fetcher, body: &[u8]) -> Result<String, Error> {
    let req: FetchRequest = serde_json::from_slice(body).map_err(|e| {
        Error::Invalid(format!(
            "a fetch request is {{\"package\", \"kind\", \"filename\"}}: {e}"
        ))
    })?;
    if !delivery::is_digest(&req.package) {
        return Err(Error::Invalid(format!(
            "package {:?} is not a digest (64 lowercase hex digits)",
            req.package
        )));
    }
    let filename = match (&req.kind, &req.filename) {
        (Kind::File, Some(name)) => {
            validate_filename(name)?;
            Some(name.clone())
        }
        (Kind::File, None) => {
            return Err(Error::Invalid("a file package needs its filename".into()))
        }
        (Kind::Archive, _) => None,
    };
    if req.files {
        fetch_files(f, &req.package).await?;
    }
    let target = f.dir.join(&req.package);
    let answer = |target: &Path| match &filename {
        Some(name) => target.join(name).to_string_lossy().into_owned(),
        None => target.to_string_lossy().into_owned(),
    };
    if target.is_dir() {
        // Fetched before (the runtime restarted its specialization): same content.
        return Ok(answer(&target));
    }
    let url = format!(
        "{}{}{}",
        f.api_url,
        delivery::POD_PACKAGES_PATH,
        req.package
    );
    let bytes = pull(f, &url, &format!("package {}", req.package)).await?;
    let dir = f.dir.clone();
    let limits = f.limits;
    let sha = req.package.clone();
    let name = filename.clone();
    tokio::task::spawn_blocking(move || write_package(&dir, &sha, name.as_deref(), &bytes, limits))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    Ok(answer(&target))
}

/// GETs `url` with the pod's credential: its body, or why not.
async fn pull(f: &Fetcher, url: &str, what: &str) -> Result<bytes::Bytes, Error> {
    let resp = f
        .http
        .get(url)
        .bearer_auth(&f.token)
        .send()
        .await
        .map_err(|e| Error::Upstream(format!("cannot reach Fusion's API at {}: {e}", f.api_url)))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(Error::Upstream(format!(
            "Fusion's API refused {what} ({status}): {}",
            text.trim()
        )));
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Error::Upstream(format!("the download of {what} broke off: {e}")))?;
    if bytes.len() as u64 > f.limits.max_unpacked {
        return Err(Error::TooLarge(format!(
            "{what} is larger than {} bytes",
            f.limits.max_unpacked
        )));
    }
    Ok(bytes)
}

/// The function's secrets and configmaps, under `<files_root>/secrets` and
/// `<files_root>/configs` and nowhere else.
async fn fetch_files(f: &Fetcher, sha: &str) -> Result<(), Error> {
    let url = format!("{}{}{sha}/files", f.api_url, delivery::POD_PACKAGES_PATH);
    let bytes = pull(f, &url, &format!("the files of package {sha}")).await?;
    let root = f.files_root.clone();
    let limits = f.limits;
    tokio::task::spawn_blocking(move || delivery::unpack_files(&bytes, &root, limits))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    Ok(())
}

/// Writes the package into `<dir>/.<sha>.partial/`, then renames it to
/// `<dir>/<sha>/`: the runtime never sees half a package.
fn write_package(
    dir: &Path,
    sha: &str,
    filename: Option<&str>,
    bytes: &[u8],
    limits: PackageLimits,
) -> Result<(), Error> {
    let io =
        |e: std::io::Error| Error::Storage(format!("cannot write under {}: {e}", dir.display()));
    let partial = dir.join(format!(".{sha}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(io)?;
    let written = match filename {
        Some(name) => std::fs::write(partial.join(name), bytes).map_err(io),
        None => delivery::unpack_tar(bytes, &partial, limits).map(|_| ()),
    };
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, dir.join(sha)).map_err(io)
}

impl FetcherArgs {
    #[cfg(test)]
    fn for_test(dir: &Path, api_url: &str) -> FetcherArgs {
        FetcherArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            dir: dir.to_path_buf(),
            files_root: dir.join("root"),
            api_url: api_url.into(),
            token: "pod-credential".into(),
            token_file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    #[test]
    fn the_credential_is_read_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-the-secret\n").unwrap();
        let mut args = FetcherArgs::for_test(dir.path(), "http://127.0.0.1:1");
        args.token = String::new();
        args.token_file = Some(file);
        assert_eq!(token(&args).unwrap(), "from-the-secret");
        args.token_file = None;
        let e = token(&args).unwrap_err().to_string();
        assert!(e.contains("FUSION_FETCH_TOKEN_FILE"), "{e}");
    }

    /// A loopback stand-in for Fusion's API: answers the package `sha` with
    /// `body` and `media_type` to the credential `pod-credential`, 403 otherwise.
    async fn api(
        sha: String,
        media_type: &'static str,
        body: Vec<u8>,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/v1/pod-packages/{sha}",
            get(
                move |axum::extract::Path(asked): axum::extract::Path<String>,
                      headers: axum::http::HeaderMap| {
                    let ok = asked == sha
                        && headers
                            .get("authorization")
                            .is_some_and(|v| v == "Bearer pod-credential");
                    let body = body.clone();
                    async move {
                        if ok {
                            ([("content-type", media_type)], body).into_response()
                        } else {
                            StatusCode::FORBIDDEN.into_response()
                        }
                    }
                },
            ),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}"), server)
    }

    async fn post(app: &Router, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
        let req = axum::http::Request::post("/fetch")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn a_file_package_is_written_under_its_digest() {
        let sha = "a".repeat(64);
        let (url, server) = api(
            sha.clone(),
            "application/octet-stream",
            b"print('hi')".to_vec(),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let app = router(&FetcherArgs::for_test(dir.path(), &url)).unwrap();
        let (status, body) = post(
            &app,
            serde_json::json!({"package": sha, "kind": "file", "filename": "hello.py"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let path = dir.path().join(&sha).join("hello.py");
        assert_eq!(body["filepath"], path.to_string_lossy().as_ref());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "print('hi')");
        // A package the API refuses: the pool is told why.
        let (status, body) = post(
            &app,
            serde_json::json!({"package": "b".repeat(64), "kind": "file", "filename": "x.py"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("403"),
            "{body}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn an_archive_is_unpacked_under_its_digest() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("pkg")).unwrap();
        std::fs::write(src.path().join("pkg/main.py"), "x = 1").unwrap();
        let tar = delivery::tar_dir(src.path()).unwrap();
        let sha = "c".repeat(64);
        let (url, server) = api(sha.clone(), delivery::TAR_MEDIA_TYPE, tar).await;
        let dir = tempfile::tempdir().unwrap();
        let app = router(&FetcherArgs::for_test(dir.path(), &url)).unwrap();
        let (status, body) =
            post(&app, serde_json::json!({"package": sha, "kind": "archive"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["filepath"],
            dir.path().join(&sha).to_string_lossy().as_ref()
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&sha).join("pkg/main.py")).unwrap(),
            "x = 1"
        );
        server.abort();
    }

    #[tokio::test]
    async fn names_that_would_leave_the_directory_are_refused_before_any_fetch() {
        let dir = tempfile::tempdir().unwrap();
        // No API at all: these must be refused before one is asked.
        let app = router(&FetcherArgs::for_test(dir.path(), "http://127.0.0.1:9")).unwrap();
        for bad in [
            serde_json::json!({"package": "../../etc", "kind": "archive"}),
            serde_json::json!({"package": "A".repeat(64), "kind": "archive"}),
            serde_json::json!({"package": "a".repeat(64), "kind": "file", "filename": "../../evil"}),
            serde_json::json!({"package": "a".repeat(64), "kind": "file", "filename": "/etc/passwd"}),
            serde_json::json!({"package": "a".repeat(64), "kind": "file"}),
            serde_json::json!({"package": "a".repeat(64), "kind": "file", "filename": "x", "url": "http://elsewhere"}),
        ] {
            let (status, body) = post(&app, bad.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert_eq!(body["error"]["code"], "invalid", "{bad}");
        }
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "something was written"
        );
    }

    #[tokio::test]
    async fn secrets_and_configmaps_are_written_under_their_roots_only() {
        let sha = "e".repeat(64);
        let files = |path: &str| {
            delivery::tar_files(&[pool_manager::backend::StagedFile {
                path: path.into(),
                contents: b"s3cret".to_vec(),
            }])
            .unwrap()
        };
        let good = files("secrets/default/db/password");
        let evil = files("userfunc/evil.py");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route(
                "/v1/pod-packages/{sha}",
                get(|| async { ([("content-type", "application/octet-stream")], "x = 1") }),
            )
            .route(
                "/v1/pod-packages/{sha}/files",
                get(
                    move |axum::extract::Path(sha): axum::extract::Path<String>| {
                        let body = if sha.starts_with('e') {
                            good.clone()
                        } else {
                            evil.clone()
                        };
                        async move { ([("content-type", delivery::TAR_MEDIA_TYPE)], body) }
                    },
                ),
            );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let dir = tempfile::tempdir().unwrap();
        let fetcher = router(&FetcherArgs::for_test(dir.path(), &url)).unwrap();
        let (status, body) = post(
            &fetcher,
            serde_json::json!({"package": sha, "kind": "file", "filename": "f.py", "files": true}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let root = dir.path().join("root");
        assert_eq!(
            std::fs::read(root.join("secrets/default/db/password")).unwrap(),
            b"s3cret"
        );
        // Files elsewhere than /secrets and /configs are refused, and the code
        // is not given to the runtime either.
        let other = "f".repeat(64);
        let (status, body) = post(
            &fetcher,
            serde_json::json!({"package": other, "kind": "file", "filename": "f.py", "files": true}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!root.join("userfunc").exists());
        assert!(!dir.path().join(&other).exists());
        server.abort();
    }

    #[test]
    fn a_tar_with_an_escaping_entry_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut header = tar::Header::new_gnu();
        let name = b"../escape.txt";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_size(4);
        header.set_mode(0o644);
        header.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header, &b"evil"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let sha = "d".repeat(64);
        let e = write_package(dir.path(), &sha, None, &tar, PackageLimits::default()).unwrap_err();
        assert_eq!(e.code(), "invalid");
        assert!(!dir.path().join("escape.txt").exists());
        assert!(!dir.path().join(&sha).exists());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
