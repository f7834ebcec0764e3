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
    match (s.locate)(&package) {
        Ok(path) => package_response(path).await,
        Err(e) => e.into_response(),
    }
}

/// A stored package as a response: a file as it is, a directory as a tar
/// stream (with the digest of its exact bytes), sent with bounded memory.
pub async fn package_response(path: PathBuf) -> Response {
    // What goes before the body: its type, length and, for a tree, the digest
    // of the exact tar bytes (a first pass over the tree that keeps nothing).
    let dir = path.clone();
    let head = tokio::task::spawn_blocking(move || {
        if dir.is_dir() {
            delivery::tar_dir_digest(&dir)
                .map(|(sha, len)| (delivery::TAR_MEDIA_TYPE, len, Some(sha)))
        } else {
            std::fs::metadata(&dir)
                .map(|m| ("application/octet-stream", m.len(), None))
                .map_err(|e| Error::Storage(format!("cannot read {}: {e}", dir.display())))
        }
    })
    .await
    .unwrap_or_else(|e| Err(Error::Internal(e.to_string())));
    let (media_type, len, digest) = match head {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let body = stream_body("the package", CHUNK, DEPTH, IDLE, move |out| {
        if path.is_dir() {
            delivery::write_tar_dir(&path, out)
        } else {
            let mut file = std::fs::File::open(&path)
                .map_err(|e| Error::Storage(format!("cannot read {}: {e}", path.display())))?;
            std::io::copy(&mut file, out)
                .map(|_| ())
                .map_err(|e| Error::Storage(format!("cannot send {}: {e}", path.display())))
        }
    });
    let mut resp = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, media_type.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response();
    if let Some(sha) = digest.and_then(|d| header::HeaderValue::from_str(&d).ok()) {
        resp.headers_mut()
            .insert(delivery::CONTENT_SHA256_HEADER, sha);
    }
    resp
}

/// The size of the chunks a package is sent in, and how many may wait to be
/// sent: a package in flight holds at most about `(DEPTH + 2) * CHUNK` bytes
/// of memory, however large it is and however many pods fetch at once.
pub(crate) const CHUNK: usize = 64 << 10;
pub(crate) const DEPTH: usize = 4;
/// How long the producer waits for a client that takes nothing (a frozen
/// fetcher whose connection stays open) before it gives up and frees its thread.
pub(crate) const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// A response body written by `produce` on a blocking thread, through a
/// channel of at most `depth` chunks of `chunk` bytes: the producer waits
/// while the client is slow, and stops when the client goes away. An error
/// after the first bytes breaks the body off (the client sees a cut stream);
/// a client that takes nothing for `idle` is given up on.
pub(crate) fn stream_body<F>(
    what: &'static str,
    chunk: usize,
    depth: usize,
    idle: std::time::Duration,
    produce: F,
) -> Body
where
    F: FnOnce(&mut ChannelWriter) -> pool_manager::Result<()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(depth.max(1));
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buf: bytes::BytesMut::with_capacity(chunk),
            chunk,
            runtime,
            idle,
        };
        let done = produce(&mut out).and_then(|()| {
            out.send()
                .map_err(|e| Error::Storage(format!("cannot send {what}: {e}")))
        });
        if let Err(e) = done {
            tracing::warn!("sending {what} broke off: {e}");
            let _ = out
                .tx
                .blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The producer's end of [`stream_body`]: buffers one chunk, then waits for
/// room in the channel.
pub(crate) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: bytes::BytesMut,
    chunk: usize,
    runtime: tokio::runtime::Handle,
    idle: std::time::Duration,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = self.buf.split().freeze();
        self.buf.reserve(self.chunk);
        let sent = self
            .runtime
            .block_on(tokio::time::timeout(self.idle, self.tx.send(Ok(full))));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took nothing for {:?}", self.idle),
            )),
        }
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.chunk - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
        let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
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
        assert_eq!(
            headers[delivery::CONTENT_SHA256_HEADER].to_str().unwrap(),
            digest_of(&body),
            "the digest sent is that of the exact bytes"
        );
        assert_eq!(headers["content-length"], body.len().to_string().as_str());
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

    fn digest_of(bytes: &[u8]) -> String {
        let mut d = delivery::ContentDigest::default();
        d.update(bytes);
        d.finish().0
    }

    #[tokio::test]
    async fn a_tree_larger_than_the_buffers_streams_through() {
        let (app, credentials, dir) = setup();
        // 6 MiB across files: many times what the stream holds at once.
        for i in 0..3u32 {
            let data: Vec<u8> = (0..2u32 << 20).map(|j| ((i + j) % 253) as u8).collect();
            std::fs::write(dir.path().join(format!("tree/blob{i}")), data).unwrap();
        }
        let (credential, digest) = delivery::mint_credential().unwrap();
        credentials.register(&digest, "pod");
        let tree = package('c', PackageKind::Archive);
        credentials.allow(&digest, &tree, Vec::new());
        let (status, headers, body) = get(&app, &tree.sha256, Some(&credential)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.len() > 6 << 20);
        assert_eq!(
            headers[delivery::CONTENT_SHA256_HEADER].to_str().unwrap(),
            digest_of(&body)
        );
        let out = tempfile::tempdir().unwrap();
        delivery::unpack_tar(&body[..], out.path(), Default::default()).unwrap();
        assert_eq!(
            std::fs::read(out.path().join("blob2")).unwrap(),
            std::fs::read(dir.path().join("tree/blob2")).unwrap()
        );
    }

    #[tokio::test]
    async fn the_producer_waits_for_the_client_memory_stays_bounded() {
        use http_body_util::BodyExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        let produced = Arc::new(AtomicU64::new(0));
        let counter = produced.clone();
        let (chunk, depth) = (1024usize, 2usize);
        let total = 1u64 << 20;
        let mut body = stream_body("the package", chunk, depth, IDLE, move |out| {
            use std::io::Write;
            let block = [7u8; 100];
            let mut sent = 0u64;
            while sent < total {
                let n = (total - sent).min(block.len() as u64) as usize;
                out.write_all(&block[..n])
                    .map_err(|e| Error::Storage(e.to_string()))?;
                sent += n as u64;
                counter.store(sent, Ordering::SeqCst);
            }
            Ok(())
        });
        // The first chunk is there before the whole body was made, and the
        // producer is at most the channel, the chunk taken and the one it
        // fills ahead of the client.
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), chunk);
        let ahead = produced.load(Ordering::SeqCst);
        assert!(
            ahead <= ((depth + 2) * chunk) as u64,
            "{ahead} bytes made before the client read more than one chunk"
        );
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(first.len() as u64 + rest.len() as u64, total);
        assert_eq!(produced.load(Ordering::SeqCst), total);
    }

    #[tokio::test]
    async fn a_producer_that_fails_breaks_the_body_off() {
        use http_body_util::BodyExt;
        let body = stream_body("the package", 16, 1, IDLE, |out| {
            use std::io::Write;
            out.write_all(&[1u8; 100])
                .map_err(|e| Error::Storage(e.to_string()))?;
            Err(Error::Storage("the disk went away".into()))
        });
        let e = body.collect().await.unwrap_err();
        assert!(e.to_string().contains("the disk went away"), "{e}");
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

    #[tokio::test]
    async fn a_client_that_takes_nothing_is_given_up_on() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let body = stream_body(
            "the package",
            16,
            1,
            std::time::Duration::from_millis(50),
            move |out| {
                use std::io::Write;
                let written = out.write_all(&[1u8; 1000]);
                let _ = done_tx.send(written.map_err(|e| e.kind()));
                Ok(())
            },
        );
        // The body is held but never read: the producer gives up on its own.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), done_rx)
            .await
            .expect("the producer gave up")
            .unwrap();
        assert_eq!(ended, Err(std::io::ErrorKind::TimedOut));
        drop(body);
    }
}
