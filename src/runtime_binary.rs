//! The `binary` environment's runtime, served by the `fusion` executable itself
//! (`fusion runtime binary`). It speaks the runtime protocol and, once
//! specialized, runs the function's executable or shell script once per request:
//! the request body on stdin, the method, path, query and headers in environment
//! variables, stdout as the response body, typed as Go's `net/http` types what
//! Fission's runtime writes untyped (`sniffed`). Exit 0 answers 200; any other exit
//! answers 500 `failed to wait for subprocess: exit status N`, as Fission's (what the program
//! wrote to stderr goes to the function's log). The function's own
//! environment variables (Fusion's `fusionEnvVars` in the specialize request)
//! are set for every run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

#[derive(Default)]
struct Runtime {
    program: OnceLock<Loaded>,
}

/// What a specialization gave: the program and the function's environment variables.
struct Loaded {
    program: PathBuf,
    /// Decided once, at specialization: the code is read-only from then on.
    launch: Launch,
    env_vars: BTreeMap<String, String>,
}

/// How the program starts on each request.
#[derive(Debug, PartialEq)]
enum Launch {
    /// As the kernel starts it: an ELF executable, or an executable script
    /// whose `#!` names an interpreter other than the shell.
    Direct,
    /// By this shell, given the option its `#!` line gives the shell (as the
    /// kernel passes it, one argument: `-e` of `#!/bin/sh -e`) and the
    /// program's path: a script for `sh` (by its `#!` or by having none), as
    /// Fission's binary image runs it.
    Shell(PathBuf, Option<String>),
}

#[derive(Deserialize)]
struct Specialize {
    filepath: String,
    #[serde(rename = "functionName", default)]
    function_name: String,
    #[serde(rename = "fusionEnvVars", default)]
    env_vars: BTreeMap<String, String>,
}

pub async fn serve() -> anyhow::Result<()> {
    // The server holds our stdin: EOF means it is gone, and so must we be.
    if std::env::var("FUSION_NO_STDIN_WATCH").as_deref() != Ok("1") {
        tokio::spawn(async {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut sink).await;
            std::process::exit(0);
        });
    }
    let state = Arc::new(Runtime::default());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v2/specialize", post(specialize_v2))
        .route("/specialize", post(specialize_v1))
        .fallback(run)
        .with_state(state);
    // A Unix socket only this instance owns (Fusion sets it on its local backends), else TCP.
    if let Ok(path) = std::env::var("RUNTIME_SOCKET") {
        let _ = std::fs::remove_file(&path);
        axum::serve(tokio::net::UnixListener::bind(&path)?, app).await?;
    } else {
        let port: u16 = std::env::var("RUNTIME_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(8888);
        let host = std::env::var("RUNTIME_HOST").unwrap_or_else(|_| "127.0.0.1".into());
        let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
        axum::serve(listener, app).await?;
    }
    Ok(())
}

fn refuse(status: StatusCode, msg: String) -> Response {
    eprintln!("{msg}");
    (status, msg).into_response()
}

async fn specialize_v2(State(rt): State<Arc<Runtime>>, body: Bytes) -> Response {
    let req: Specialize = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("bad specialize request: {e}"),
            )
        }
    };
    let path = Path::new(&req.filepath);
    let program = if path.is_dir() {
        let entry = if req.function_name.is_empty() {
            "main"
        } else {
            req.function_name.as_str()
        };
        if entry.contains("..") || entry.starts_with('/') {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("entrypoint {entry:?} must be a path inside the archive"),
            );
        }
        path.join(entry)
    } else {
        path.to_path_buf()
    };
    install(&rt, program, req.env_vars)
}

async fn specialize_v1(State(rt): State<Arc<Runtime>>) -> Response {
    let dir = std::env::var("USERFUNC_DIR").unwrap_or_else(|_| "/userfunc".into());
    install(&rt, Path::new(&dir).join("user"), BTreeMap::new())
}

fn install(rt: &Runtime, program: PathBuf, env_vars: BTreeMap<String, String>) -> Response {
    if !program.is_file() {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no executable at {}", program.display()),
        );
    }
    let loaded = Loaded {
        launch: launch_for(&program),
        program: program.clone(),
        env_vars,
    };
    if rt.program.set(loaded).is_err() {
        return refuse(
            StatusCode::CONFLICT,
            "this instance is already specialized".into(),
        );
    }
    eprintln!("specialized {}", program.display());
    "specialized".into_response()
}

async fn run(State(rt): State<Arc<Runtime>>, req: Request) -> Response {
    let Some(Loaded {
        program,
        launch,
        env_vars,
    }) = rt.program.get()
    else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generic instance: not specialized".into(),
        );
    };
    let (parts, body) = req.into_parts();
    // The script runs only on a whole body: hyper ends a body that stops short of
    // its Content-Length or last chunk with an error, and that is a 400 here.
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            )
        }
    };
    let mut cmd = match launch {
        Launch::Direct => tokio::process::Command::new(program),
        Launch::Shell(shell, option) => {
            let mut c = tokio::process::Command::new(shell);
            if shell.ends_with("busybox") {
                c.arg("sh");
            }
            c.args(option).arg(program);
            c
        }
    };
    cmd.envs(env_vars)
        .envs(request_env(
            &parts.method,
            &parts.uri,
            &parts.headers,
            body.len(),
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = program.parent() {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot run {}: {e}", program.display()),
            )
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A program that does not read its input closes the pipe early; that is fine.
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
    }
    let out = match child.wait_with_output().await {
        Ok(o) => o,
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("function failed: {e}"),
            )
        }
    };
    if !out.stderr.is_empty() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    if out.status.success() {
        match sniffed(&out.stdout) {
            Some(kind) => (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, kind)],
                out.stdout,
            )
                .into_response(),
            None => StatusCode::OK.into_response(),
        }
    } else {
        // As Fission's binary runtime: the exit, not what the program wrote to
        // stderr (its log has that), which may hold what the caller must not see.
        use std::os::unix::process::ExitStatusExt;
        // In Go's words for the exit (`exit status 3`, `signal: killed`).
        let msg = match (out.status.code(), out.status.signal()) {
            (Some(code), _) => format!("failed to wait for subprocess: exit status {code}"),
            (None, Some(signal)) => {
                let name = match signal {
                    libc::SIGKILL => "killed".to_string(),
                    libc::SIGTERM => "terminated".to_string(),
                    libc::SIGSEGV => "segmentation fault".to_string(),
                    libc::SIGABRT => "aborted".to_string(),
                    libc::SIGINT => "interrupt".to_string(),
                    libc::SIGPIPE => "broken pipe".to_string(),
                    n => format!("signal {n}"),
                };
                format!("failed to wait for subprocess: signal: {name}")
            }
            (None, None) => format!("failed to wait for subprocess: {}", out.status),
        };
        (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response()
    }
}

/// The type of a program's output, as Go's `http.DetectContentType` finds it
/// (the WHATWG sniffing rules) where Fission's binary runtime writes stdout
/// without one: HTML and XML by their first tag, the common image and PDF
/// signatures, text when the first 512 bytes hold no control bytes, else
/// binary. None for no output (Go then sends no type).
fn sniffed(body: &[u8]) -> Option<&'static str> {
    if body.is_empty() {
        return None;
    }
    let head = &body[..body.len().min(512)];
    let start = head
        .iter()
        .position(|b| !matches!(b, b'\t' | b'\n' | b'\x0c' | b'\r' | b' '))
        .unwrap_or(head.len());
    let text = &head[start..];
    // A tag counts when a space or `>` follows it.
    const HTML: [&[u8]; 17] = [
        b"<!DOCTYPE HTML",
        b"<HTML",
        b"<HEAD",
        b"<SCRIPT",
        b"<IFRAME",
        b"<H1",
        b"<DIV",
        b"<FONT",
        b"<TABLE",
        b"<A",
        b"<STYLE",
        b"<TITLE",
        b"<B",
        b"<BODY",
        b"<BR",
        b"<P",
        b"<!--",
    ];
    let tag = |sig: &[u8]| {
        text.len() > sig.len()
            && text[..sig.len()].eq_ignore_ascii_case(sig)
            && matches!(text[sig.len()], b' ' | b'>')
    };
    if HTML.iter().any(|sig| tag(sig)) {
        return Some("text/html; charset=utf-8");
    }
    if text.starts_with(b"<?xml") {
        return Some("text/xml; charset=utf-8");
    }
    const MAGIC: [(&[u8], &str); 5] = [
        (b"%PDF-", "application/pdf"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"\xff\xd8\xff", "image/jpeg"),
    ];
    if let Some((_, kind)) = MAGIC.iter().find(|(sig, _)| head.starts_with(sig)) {
        return Some(kind);
    }
    let binary = |b: &u8| matches!(b, 0x00..=0x08 | 0x0b | 0x0e..=0x1a | 0x1c..=0x1f);
    if head.iter().any(binary) {
        Some("application/octet-stream")
    } else {
        Some("text/plain; charset=utf-8")
    }
}

/// Fission's binary image is Alpine, where `/bin/sh` is busybox's ash, and it
/// runs every script with it: scripts written for it use busybox's builtins
/// (`printf "----"`, which dash and bash refuse as an option). So a script for
/// the shell runs under busybox when the machine has it (inside containers too:
/// they see the host's system directories), else under `/bin/sh`.
fn launch_for(program: &Path) -> Launch {
    launch_with(program, the_shell())
}

fn the_shell() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/bin/sh"))
}

fn launch_with(program: &Path, shell: PathBuf) -> Launch {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut head = Vec::with_capacity(256);
    if let Ok(f) = std::fs::File::open(program) {
        let _ = f.take(256).read_to_end(&mut head);
    }
    let executable = std::fs::metadata(program)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    let interpreter = head.strip_prefix(b"#!").map(shell_of);
    match interpreter {
        // For the shell, with its option, executable or not.
        Some(Some(option)) => Launch::Shell(shell, option),
        Some(None) if executable => Launch::Direct,
        None if executable && head.starts_with(b"\x7fELF") => Launch::Direct,
        // What the kernel cannot start: the shell reads it, as Fission's runtime.
        _ => Launch::Shell(shell, None),
    }
}

/// When a `#!` line (after the `#!`) names `sh` or `ash`, directly or
/// through `env`: the option it gives the shell, the rest of the line as the
/// kernel passes it (one argument), if any. `None`: another interpreter.
fn shell_of(line: &[u8]) -> Option<Option<String>> {
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    let base = |w: &str| w.rsplit('/').next().unwrap_or_default().to_owned();
    let is_sh = |w: &str| matches!(base(w).as_str(), "sh" | "ash");
    let (first, rest) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(a, b)| (a, b.trim()));
    match first {
        // `#!` alone: no interpreter, so the shell, as for a script without one.
        "" => Some(None),
        w if base(w) == "env" => {
            let mut words = rest.split_whitespace();
            words.next().filter(|w| is_sh(w)).map(|_| None)
        }
        w if is_sh(w) => Some((!rest.is_empty()).then(|| rest.to_string())),
        _ => None,
    }
}

/// CGI-like variables: REQUEST_METHOD, REQUEST_URI (path and query, as
/// Fission's), REQUEST_PATH, QUERY_STRING, CONTENT_LENGTH (the body's bytes,
/// as read whole) and HTTP_<NAME> for each header (upper case, '-' as '_'),
/// and as Fission's runtime names it too, its '-' kept (`HTTP_X-FOO`, which
/// `printenv` and programs read, though a shell cannot).
fn request_env(
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    content_length: usize,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("REQUEST_METHOD".to_string(), method.to_string()),
        (
            "REQUEST_URI".to_string(),
            uri.path_and_query()
                .map_or_else(|| uri.path().to_string(), ToString::to_string),
        ),
        ("CONTENT_LENGTH".to_string(), content_length.to_string()),
        ("REQUEST_PATH".to_string(), uri.path().to_string()),
        (
            "QUERY_STRING".to_string(),
            uri.query().unwrap_or("").to_string(),
        ),
    ];
    for k in headers.keys() {
        // A caller's `Proxy` header would be HTTP_PROXY, which HTTP clients
        // take as their proxy (httpoxy): left out, as CGI servers do.
        if k.as_str() == "proxy" {
            continue;
        }
        // A header sent more than once is one variable of all its values, as
        // CGI has it (cookies joined as a browser joins them).
        let values: Vec<&str> = headers
            .get_all(k)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            continue;
        }
        let join = if *k == http::header::COOKIE {
            "; "
        } else {
            ", "
        };
        let upper = k.as_str().to_ascii_uppercase();
        let value = values.join(join);
        if upper.contains('-') {
            env.push((format!("HTTP_{upper}"), value.clone()));
        }
        env.push((format!("HTTP_{}", upper.replace('-', "_")), value));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::{launch_with, request_env, sniffed, Launch};

    #[test]
    fn a_header_sent_more_than_once_is_one_variable_of_every_value() {
        let mut headers = http::HeaderMap::new();
        for (k, v) in [
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-multi", "one"),
            ("x-multi", "two"),
            ("x-once", "only"),
        ] {
            headers.append(k, http::HeaderValue::from_static(v));
        }
        let uri: http::Uri = "/p?q=1".parse().unwrap();
        let env = request_env(&http::Method::GET, &uri, &headers, 0);
        let get = |name: &str| {
            let all: Vec<&String> = env
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v)
                .collect();
            assert_eq!(all.len(), 1, "{name}: {env:?}");
            all[0].clone()
        };
        assert_eq!(get("HTTP_COOKIE"), "a=1; b=2");
        assert_eq!(get("HTTP_X_MULTI"), "one, two");
        assert_eq!(get("HTTP_X_ONCE"), "only");
        // Fission's name for it too.
        assert_eq!(get("HTTP_X-ONCE"), "only");
        assert_eq!(get("QUERY_STRING"), "q=1");
    }
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// The types Go's `http.DetectContentType` gives the same output, which
    /// Fission's binary runtime answers with.
    #[test]
    fn output_is_typed_as_fissions_runtime_types_it() {
        let text = Some("text/plain; charset=utf-8");
        assert_eq!(sniffed(b"hello\n"), text);
        assert_eq!(sniffed("café ☕\n".as_bytes()), text);
        assert_eq!(sniffed(b"{\"a\": 1}"), text, "Go does not tell JSON");
        assert_eq!(sniffed(b"\x1b[1mbold\x1b[0m"), text, "ESC is text");
        let html = Some("text/html; charset=utf-8");
        assert_eq!(sniffed(b"\n  <!doctype html>\n<p>hi</p>"), html);
        assert_eq!(sniffed(b"<p>hi</p>"), html);
        assert_eq!(
            sniffed(b"<pre>x</pre>"),
            text,
            "<pre is not one of the tags"
        );
        assert_eq!(
            sniffed(b"<?xml version=\"1.0\"?><a/>"),
            Some("text/xml; charset=utf-8")
        );
        assert_eq!(sniffed(b"\x89PNG\r\n\x1a\n\0\0"), Some("image/png"));
        assert_eq!(sniffed(b"ab\0cd"), Some("application/octet-stream"));
        assert_eq!(sniffed(b""), None);
    }

    /// A script for the shell goes to the shell Fission's image has; anything
    /// else that the kernel can start, to the kernel.
    #[test]
    fn scripts_for_the_shell_go_to_the_shell_and_the_rest_to_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let shell = PathBuf::from("/bin/busybox");
        let launch = |name: &str, head: &[u8], mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, head).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            launch_with(&p, shell.clone())
        };
        let sh = Launch::Shell(shell.clone(), None);
        assert_eq!(launch("a", b"#!/bin/sh\necho hi\n", 0o755), sh);
        assert_eq!(
            launch("b", b"#! /bin/ash -e\n", 0o755),
            Launch::Shell(shell.clone(), Some("-e".into())),
            "the line's option goes to the shell"
        );
        assert_eq!(
            launch("b2", b"#!/bin/sh -eu\r\n", 0o644),
            Launch::Shell(shell.clone(), Some("-eu".into())),
        );
        assert_eq!(launch("c", b"#!/usr/bin/env sh\n", 0o755), sh);
        assert_eq!(launch("d", b"echo no line for an interpreter\n", 0o755), sh);
        assert_eq!(launch("e", b"#!/bin/bash\n", 0o644), sh, "not executable");
        assert_eq!(
            launch("f", b"#!/bin/bash\necho hi\n", 0o755),
            Launch::Direct
        );
        assert_eq!(
            launch("g", b"#!/usr/bin/env python3\n", 0o755),
            Launch::Direct
        );
        assert_eq!(
            launch("h", b"#!/bin/shell-of-mine\n", 0o755),
            Launch::Direct
        );
        assert_eq!(launch("i", b"\x7fELF\x02\x01", 0o755), Launch::Direct);
    }
}
