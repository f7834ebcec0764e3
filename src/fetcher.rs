//! `fusion fetcher`: the sidecar of every function pod (the kubernetes backend).
//! It listens for `POST /fetch {"package", "kind", "filename"}` from the pool,
//! pulls that package from Fusion's API (`FUSION_API_URL`) with the pod's own
//! credential (in the file `FUSION_FETCH_TOKEN_FILE` names, the pod's Secret;
//! or `FUSION_FETCH_TOKEN`), writes it under `<dir>/<sha256>/` (a file as
//! `<dir>/<sha256>/<filename>`, an archive unpacked there) and answers the
//! `filepath` the runtime loads. The body is streamed to a file beside the
//! package (one chunk in memory at a time, refused past a size limit), checked
//! (a file's sha256 must be the package's digest, a tree's tar stream the
//! digest the server sent with it) and only then written in place; a refused
//! or broken download leaves nothing. Nothing it is sent can make it write
//! outside that directory or fetch from anywhere else.

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
    /// The most bytes a package may arrive as ([`delivery::max_transfer`]).
    max_transfer: u64,
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
    let limits = PackageLimits::default();
    router_with(args, limits, delivery::max_transfer(limits))
}

fn router_with(
    args: &FetcherArgs,
    limits: PackageLimits,
    max_transfer: u64,
) -> anyhow::Result<Router> {
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
        limits,
        max_transfer,
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
    // Streamed to a file beside the package, checked, then written in place:
    // memory holds one chunk of the body at a time, however large it is.
    static FETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let download = f.dir.join(format!(".{}.{n}.download", req.package));
    let result = fetch_to(f, &url, &req.package, filename.as_deref(), &download).await;
    let _ = tokio::fs::remove_file(&download).await;
    result?;
    Ok(answer(&target))
}

/// Downloads the package to `download`, checks it (a file's sha256 is the
/// package's digest; a tree's tar stream has the sha256 the server sent in
/// [`delivery::CONTENT_SHA256_HEADER`]) and writes it under its digest.
async fn fetch_to(
    f: &Fetcher,
    url: &str,
    sha: &str,
    filename: Option<&str>,
    download: &Path,
) -> Result<(), Error> {
    let what = format!("package {sha}");
    let resp = request(f, url, &what).await?;
    let sent_digest = resp
        .headers()
        .get(delivery::CONTENT_SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (got, _) = stream_to_file(resp, download, f.max_transfer, &what).await?;
    let expected = match filename {
        Some(_) => sha.to_string(),
        None => sent_digest.ok_or_else(|| {
            Error::Upstream(format!(
                "Fusion's API sent {what} without its {} header: it is not a directory package, \
                 or the server is older than the fetcher",
                delivery::CONTENT_SHA256_HEADER
            ))
        })?,
    };
    if got != expected {
        return Err(Error::Upstream(format!(
            "{what} arrived with sha256 {got}, not {expected}: nothing was written"
        )));
    }
    let dir = f.dir.clone();
    let limits = f.limits;
    let sha = sha.to_string();
    let name = filename.map(str::to_string);
    let download = download.to_path_buf();
    tokio::task::spawn_blocking(move || {
        write_package(&dir, &sha, name.as_deref(), &download, limits)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

/// GETs `url` with the pod's credential: the response, or why not.
async fn request(f: &Fetcher, url: &str, what: &str) -> Result<reqwest::Response, Error> {
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
    if let Some(len) = resp.content_length().filter(|&len| len > f.max_transfer) {
        return Err(too_large(what, len, f.max_transfer));
    }
    Ok(resp)
}

fn too_large(what: &str, len: u64, limit: u64) -> Error {
    Error::TooLarge(format!(
        "{what} is {len} bytes or more, larger than the fetcher takes ({limit} bytes)"
    ))
}

/// Writes the body into the file `to` one chunk at a time, stopping past
/// `limit` bytes: its sha256 (hex) and length. On an error the file may be
/// left for the caller to remove.
async fn stream_to_file(
    mut resp: reqwest::Response,
    to: &Path,
    limit: u64,
    what: &str,
) -> Result<(String, u64), Error> {
    use tokio::io::AsyncWriteExt;
    let io = |e: std::io::Error| Error::Storage(format!("cannot write {}: {e}", to.display()));
    let mut file = tokio::fs::File::create(to).await.map_err(io)?;
    let mut digest = delivery::ContentDigest::default();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Error::Upstream(format!("the download of {what} broke off: {e}")))?
    {
        if digest.len() + chunk.len() as u64 > limit {
            return Err(too_large(what, digest.len() + chunk.len() as u64, limit));
        }
        digest.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    Ok(digest.finish())
}

/// GETs `url` into memory, at most `limit` bytes (the secrets' and
/// configmaps' files: small).
async fn pull(f: &Fetcher, url: &str, what: &str) -> Result<Vec<u8>, Error> {
    let mut resp = request(f, url, what).await?;
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Error::Upstream(format!("the download of {what} broke off: {e}")))?
    {
        if (out.len() + chunk.len()) as u64 > f.limits.max_unpacked {
            return Err(too_large(
                what,
                (out.len() + chunk.len()) as u64,
                f.limits.max_unpacked,
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
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

/// Writes the downloaded package (the file `download`) into
/// `<dir>/.<sha>.partial/`, then renames it to `<dir>/<sha>/`: the runtime
/// never sees half a package.
fn write_package(
    dir: &Path,
    sha: &str,
    filename: Option<&str>,
    download: &Path,
    limits: PackageLimits,
) -> Result<(), Error> {
    let io =
        |e: std::io::Error| Error::Storage(format!("cannot write under {}: {e}", dir.display()));
    let partial = dir.join(format!(".{sha}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(io)?;
    let written = match filename {
        Some(name) => std::fs::rename(download, partial.join(name)).map_err(io),
        None => std::fs::File::open(download)
            .map_err(io)
            .and_then(|file| delivery::unpack_tar(std::io::BufReader::new(file), &partial, limits))
            .map(|_| ()),
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
        api_with(sha, media_type, body, None).await
    }

    fn sha256(bytes: &[u8]) -> String {
        let mut d = delivery::ContentDigest::default();
        d.update(bytes);
        d.finish().0
    }

    /// As [`api`], the body sent in chunks with no length; a tar with
    /// `header_digest` as its digest header if given (its own otherwise).
    async fn api_with(
        sha: String,
        media_type: &'static str,
        body: Vec<u8>,
        header_digest: Option<String>,
    ) -> (String, tokio::task::JoinHandle<()>) {
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
                    let header_digest = header_digest.clone();
                    async move {
                        if ok {
                            let digest = sha256(&body);
                            // In chunks, with no length: the fetcher counts.
                            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                                body.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
                            let mut resp =
                                axum::body::Body::from_stream(futures_util::stream::iter(chunks))
                                    .into_response();
                            let h = resp.headers_mut();
                            h.insert("content-type", media_type.parse().unwrap());
                            if media_type == delivery::TAR_MEDIA_TYPE {
                                h.insert(
                                    delivery::CONTENT_SHA256_HEADER,
                                    header_digest.unwrap_or(digest).parse().unwrap(),
                                );
                            }
                            resp
                        } else {
                            StatusCode::FORBIDDEN.into_response()
                        }
                    }
                },
            ),
        );
        serve(app).await
    }

    /// Serves `app` on a free loopback port: its URL, and the server's task.
    async fn serve(app: Router) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, server)
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
        let sha = sha256(b"print('hi')");
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
        let sha = sha256(b"x = 1");
        let files = |path: &str| {
            delivery::tar_files(&[pool_manager::backend::StagedFile {
                path: path.into(),
                contents: b"s3cret".to_vec(),
            }])
            .unwrap()
        };
        let good = files("secrets/default/db/password");
        let evil = files("userfunc/evil.py");
        let good_sha = sha.clone();
        let app = Router::new()
            .route(
                "/v1/pod-packages/{sha}",
                get(|| async { ([("content-type", "application/octet-stream")], "x = 1") }),
            )
            .route(
                "/v1/pod-packages/{sha}/files",
                get(
                    move |axum::extract::Path(sha): axum::extract::Path<String>| {
                        let body = if sha == good_sha {
                            good.clone()
                        } else {
                            evil.clone()
                        };
                        async move { ([("content-type", delivery::TAR_MEDIA_TYPE)], body) }
                    },
                ),
            );
        let (url, server) = serve(app).await;
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

    /// Nothing under the fetcher's directory but `keep`.
    fn only(dir: &Path, keep: &[&str]) -> Vec<String> {
        let mut left: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect();
        left.sort();
        left
    }

    #[tokio::test]
    async fn a_large_package_streams_to_disk_and_one_over_the_limit_leaves_nothing() {
        // 3 MiB arriving in 64 KiB chunks: written as it comes, checked, kept.
        let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        let sha = sha256(&big);
        let (url, server) = api(sha.clone(), "application/octet-stream", big.clone()).await;
        let limits = PackageLimits {
            max_unpacked: 4 << 20,
            ..PackageLimits::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let args = FetcherArgs::for_test(dir.path(), &url);
        let app = router_with(&args, limits, 4 << 20).unwrap();
        let asked = serde_json::json!({"package": sha, "kind": "file", "filename": "big.bin"});
        let (status, body) = post(&app, asked.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(std::fs::read(dir.path().join(&sha).join("big.bin")).unwrap() == big);
        assert_eq!(only(dir.path(), &[&sha]), Vec::<String>::new());
        // The same body to a fetcher that takes 1 MiB: refused, nothing left.
        let small = tempfile::tempdir().unwrap();
        let args = FetcherArgs::for_test(small.path(), &url);
        let app = router_with(&args, limits, 1 << 20).unwrap();
        let (status, body) = post(&app, asked).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(body["error"]["code"], "payload_too_large");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("larger than the fetcher takes (1048576 bytes)"),
            "{body}"
        );
        assert_eq!(only(small.path(), &[]), Vec::<String>::new());
        server.abort();
    }

    #[tokio::test]
    async fn a_package_that_is_not_what_was_asked_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A file whose bytes are not the digest asked for.
        let asked = "a".repeat(64);
        let (url, server) = api(
            asked.clone(),
            "application/octet-stream",
            b"tampered".to_vec(),
        )
        .await;
        let app = router(&FetcherArgs::for_test(dir.path(), &url)).unwrap();
        let (status, body) = post(
            &app,
            serde_json::json!({"package": asked, "kind": "file", "filename": "f.py"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("arrived with sha256 {}", sha256(b"tampered"))),
            "{body}"
        );
        assert_eq!(only(dir.path(), &[]), Vec::<String>::new());
        server.abort();
        // A tree whose tar stream is not the one the server vouched for.
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("main.py"), "x = 1").unwrap();
        let tar = delivery::tar_dir(src.path()).unwrap();
        let asked = "c".repeat(64);
        let wrong = "0".repeat(64);
        let (url, server) = api_with(
            asked.clone(),
            delivery::TAR_MEDIA_TYPE,
            tar,
            Some(wrong.clone()),
        )
        .await;
        let app = router(&FetcherArgs::for_test(dir.path(), &url)).unwrap();
        let (status, body) = post(
            &app,
            serde_json::json!({"package": asked, "kind": "archive"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("not {wrong}")),
            "{body}"
        );
        assert_eq!(only(dir.path(), &[]), Vec::<String>::new());
        server.abort();
        // A tree sent without the digest of its stream: not taken unchecked.
        let (url, server) = api(asked.clone(), "application/octet-stream", b"x".to_vec()).await;
        let app = router(&FetcherArgs::for_test(dir.path(), &url)).unwrap();
        let (status, body) = post(
            &app,
            serde_json::json!({"package": asked, "kind": "archive"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(delivery::CONTENT_SHA256_HEADER),
            "{body}"
        );
        assert_eq!(only(dir.path(), &[]), Vec::<String>::new());
        server.abort();
    }

    /// The fetcher against the real endpoint: a tree of several times what
    /// either side buffers, streamed, checked and unpacked.
    #[tokio::test]
    async fn the_fetcher_and_the_api_endpoint_agree_on_a_large_tree() {
        use crate::api::pod_packages::{routes, PodPackages};
        use pool_manager::delivery::Credentials;
        let store = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(store.path().join("lib")).unwrap();
        let blob: Vec<u8> = (0..3u32 << 20).map(|i| (i % 241) as u8).collect();
        std::fs::write(store.path().join("lib/blob"), &blob).unwrap();
        std::fs::write(store.path().join("main.py"), "x = 1").unwrap();
        let tree = pool_manager::PackageRef {
            sha256: "9".repeat(64),
            kind: pool_manager::PackageKind::Archive,
            filename: None,
        };
        let credentials = Arc::new(Credentials::default());
        let digest = delivery::credential_digest("pod-credential");
        credentials.register(&digest, "pod");
        credentials.allow(&digest, &tree, Vec::new());
        let root = store.path().to_path_buf();
        let app = routes(PodPackages {
            credentials,
            locate: Arc::new(move |_: &pool_manager::PackageRef| Ok(root.clone())),
        });
        let (url, server) = serve(app).await;
        let dir = tempfile::tempdir().unwrap();
        let fetcher = router(&FetcherArgs::for_test(dir.path(), &url)).unwrap();
        let (status, body) = post(
            &fetcher,
            serde_json::json!({"package": tree.sha256, "kind": "archive"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let got = dir.path().join(&tree.sha256);
        assert!(std::fs::read(got.join("lib/blob")).unwrap() == blob);
        assert_eq!(
            std::fs::read_to_string(got.join("main.py")).unwrap(),
            "x = 1"
        );
        assert_eq!(only(dir.path(), &[&tree.sha256]), Vec::<String>::new());
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
        let downloads = tempfile::tempdir().unwrap();
        let download = downloads.path().join("tar");
        std::fs::write(&download, &tar).unwrap();
        let e =
            write_package(dir.path(), &sha, None, &download, PackageLimits::default()).unwrap_err();
        assert_eq!(e.code(), "invalid");
        assert!(!dir.path().join("escape.txt").exists());
        assert!(!dir.path().join(&sha).exists());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
