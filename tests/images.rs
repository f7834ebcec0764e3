//! Environments that run an OCI image on the container backend. Each test builds
//! a small image here, with no registry and no network: one layer holding the
//! `fusion` executable at `/fusion` (whose binary runtime speaks Fission's
//! protocol on port 8888 when given no socket), `/bin/sh`, and the libraries
//! both need; a configuration whose entrypoint starts that runtime.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, BIN};
use serde_json::{json, Value};
use sha2::Digest;

fn container_server() -> Server {
    Server::start_with(&[("FUSION_BACKEND", "container")])
}

/// A function for the binary runtime: it answers only from inside the image.
const HELLO: &str =
    "[ -x /fusion ] && [ ! -e /usr/bin/python3 ] && echo \"from the image: $QUERY_STRING\"\n";

/// The architecture name images use for this machine.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies `from` (following links) to the same absolute path under `root`.
fn copy_in(root: &Path, from: &Path, to: &str) {
    let dest = root.join(to.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("copy {from:?}: {e}"));
}

/// The shared libraries `ldd` lists for `exe`, the loader included.
fn libraries(exe: &str) -> Vec<String> {
    let out = Command::new("ldd").arg(exe).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(str::to_string)
        .collect()
}

/// Writes `bytes` as a blob of the layout; answers its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let hex = format!("{:x}", sha2::Sha256::digest(bytes));
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// An image layout built in `dir`: its directory and its layer's blob.
struct Image {
    layout: PathBuf,
    layer: PathBuf,
    config: PathBuf,
}

/// `env` is added to the image's `Env`.
fn build_image(dir: &Path, gzip: bool, env: &[&str]) -> Image {
    let staging = dir.join("staging");
    copy_in(&staging, Path::new(BIN), "/fusion");
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    copy_in(&staging, &sh, "/bin/sh");
    for lib in libraries(BIN)
        .into_iter()
        .chain(libraries(sh.to_str().unwrap()))
    {
        copy_in(&staging, Path::new(&lib), &lib);
    }
    let tar = dir.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&staging)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let uncompressed = std::fs::read(&tar).unwrap();
    let diff_id = format!("sha256:{:x}", sha2::Sha256::digest(&uncompressed));
    let (layer_bytes, layer_type) = if gzip {
        run(Command::new("gzip").args(["-n", "-1"]).arg(&tar));
        (
            std::fs::read(dir.join("layer.tar.gz")).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    } else {
        (uncompressed, "application/vnd.oci.image.layer.v1.tar")
    };

    let layout = dir.join("layout");
    let layer = blob(&layout, layer_type, &layer_bytes);
    let env = [&["RUNTIME_PORT=8888"][..], env].concat();
    let config = json!({
        "architecture": arch(),
        "os": "linux",
        "config": {
            "Entrypoint": ["/fusion", "runtime", "binary"],
            "Env": env,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let mut manifest = blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    manifest["platform"] = json!({"architecture": arch(), "os": "linux"});
    let index = json!({"schemaVersion": 2, "manifests": [manifest]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let path = |d: &Value| {
        let hex = d["digest"].as_str().unwrap().trim_start_matches("sha256:");
        layout.join("blobs/sha256").join(hex)
    };
    Image {
        layer: path(&layer),
        config: path(&config),
        layout,
    }
}

/// The unpacked images in the server's data directory (not those being unpacked).
fn unpacked(s: &Server) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(s.data_dir().join("images")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

fn image_env(s: &Server, name: &str, image: &Path) -> (u16, Value) {
    s.call(
        "POST",
        "/v1/environments",
        Some(json!({"name": name, "image": image, "poolsize": 1})),
    )
}

fn error_message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_function_runs_in_an_image_and_two_environments_share_one_unpacked_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(tmp.path(), false, &[]);
    let s = container_server();
    for env in ["img-a", "img-b"] {
        let (status, v) = image_env(&s, env, &image.layout);
        assert_eq!(status, 201, "{v}");
        s.function(&format!("hello-{env}"), env, "hello.sh", HELLO, json!({}));
    }
    for env in ["img-a", "img-b"] {
        let r = s.get(&format!("/fission-function/hello-{env}?who={env}"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().unwrap(), format!("from the image: who={env}\n"));
    }
    assert_eq!(unpacked(&s).len(), 1, "{:?}", unpacked(&s));
    // The router reaches each instance inside its own network namespace.
    let instances = s.instances("hello-img-a");
    assert!(!instances.is_empty());
    for i in instances {
        let address = i["address"].as_str().unwrap_or_default();
        assert!(address.starts_with("netns:"), "{i}");
    }
}

/// An image rebuilt at the same path: `env update` with the same path
/// replaces the environment's warm instances, so every call gets the new
/// image; an update that finds the same image there changes nothing.
#[test]
fn an_update_after_the_image_was_rebuilt_at_the_same_path_replaces_the_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let first = build_image(&tmp.path().join("one"), false, &["GREETING=one"]);
    let s = container_server();
    let env = json!({"name": "img", "image": first.layout, "poolsize": 1});
    s.ok("POST", "/v1/environments", Some(env.clone()));
    s.function(
        "greet",
        "img",
        "greet.sh",
        "echo \"greeting=$GREETING\"\n",
        json!({}),
    );
    let greeting = || s.get("/fission-function/greet").text().unwrap();
    assert_eq!(greeting(), "greeting=one\n");
    // The same image again: the warm instance stays.
    let ids = || -> Vec<Value> {
        s.instances("greet")
            .iter()
            .map(|i| i["id"].clone())
            .collect()
    };
    let warm = ids();
    s.ok("PUT", "/v1/environments/img", Some(env.clone()));
    assert_eq!(ids(), warm, "an update that changed nothing");
    // Rebuilt in place, as `skopeo copy` over the same directory does.
    let second = build_image(&tmp.path().join("two"), false, &["GREETING=two"]);
    std::fs::remove_dir_all(&first.layout).unwrap();
    std::fs::rename(&second.layout, &first.layout).unwrap();
    s.ok("PUT", "/v1/environments/img", Some(env));
    assert_eq!(greeting(), "greeting=two\n");
}

/// An unpacked image no environment uses any more is removed by the prune
/// once it was last used over an hour ago; the one in use stays.
#[test]
fn a_prune_removes_the_unpacked_images_no_environment_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let old = build_image(&tmp.path().join("old"), false, &["GREETING=old"]);
    let new = build_image(&tmp.path().join("new"), false, &["GREETING=new"]);
    let s = container_server();
    let env = |image: &Path| json!({"name": "img", "image": image, "poolsize": 1});
    s.ok("POST", "/v1/environments", Some(env(&old.layout)));
    s.function(
        "greet",
        "img",
        "greet.sh",
        "echo \"$GREETING\"\n",
        json!({}),
    );
    assert_eq!(s.get("/fission-function/greet").text().unwrap(), "old\n");
    s.ok("PUT", "/v1/environments/img", Some(env(&new.layout)));
    assert_eq!(s.get("/fission-function/greet").text().unwrap(), "new\n");
    let both = unpacked(&s);
    assert_eq!(both.len(), 2, "{both:?}");
    // Within the hour, both stay (an instance may still drain from the old).
    let pruned = s.ok("POST", "/v1/archives/prune", None);
    assert_eq!(pruned["images_removed"], json!([]), "{pruned}");
    // An hour on: the one no environment uses goes.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for name in &both {
        std::fs::File::open(s.data_dir().join("images").join(name))
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    let pruned = s.ok("POST", "/v1/archives/prune", None);
    let removed = pruned["images_removed"].as_array().unwrap().clone();
    assert_eq!(removed.len(), 1, "{pruned}");
    assert!(pruned["image_bytes"].as_u64().unwrap() > 0, "{pruned}");
    let left = unpacked(&s);
    assert_eq!(left.len(), 1);
    assert!(!removed.contains(&json!(left[0])));
    // What is left is what the environment runs: a new instance starts from it.
    s.ok("DELETE", "/v1/functions/greet", None);
    s.function(
        "greet2",
        "img",
        "greet.sh",
        "echo \"$GREETING\"\n",
        json!({}),
    );
    assert_eq!(s.get("/fission-function/greet2").text().unwrap(), "new\n");
    assert_eq!(unpacked(&s), left);
}

/// An image's entrypoint runs under Fusion's init too: the orphans a
/// function leaves are reaped, so they never fill the pids limit (256).
#[test]
fn an_image_instance_reaps_the_orphans_its_function_leaves() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(tmp.path(), false, &[]);
    let s = container_server();
    let (status, v) = image_env(&s, "img", &image.layout);
    assert_eq!(status, 201, "{v}");
    // Only the shell's builtins: the image has no other program.
    let code = "i=0\nwhile [ $i -lt 400 ]; do\n  (true &) 2>/dev/null || { printf 'no fork after %s' $i; exit 0; }\n  i=$((i+1))\ndone\nprintf 'started %s' $i\n";
    s.function("orphans", "img", "orphans.sh", code, json!({}));
    for _ in 0..2 {
        let r = s.get("/fission-function/orphans");
        assert_eq!(r.text().unwrap(), "started 400");
    }
}

#[test]
fn an_oci_archive_with_a_gzip_layer_runs_too() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(tmp.path(), true, &[]);
    let archive = tmp.path().join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&image.layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    let s = container_server();
    let (code, out, err) = s.cli(&[
        "env",
        "create",
        "--name",
        "archived",
        "--image",
        archive.to_str().unwrap(),
        "--poolsize",
        "1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    s.function("hello", "archived", "hello.sh", HELLO, json!({}));
    let r = s.get("/fission-function/hello?from=archive");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "from the image: from=archive\n");
    assert_eq!(unpacked(&s).len(), 1, "{:?}", unpacked(&s));
}

#[test]
fn what_is_not_an_image_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let s = container_server();
    // A path with nothing there.
    let (status, v) = s.call(
        "POST",
        "/v1/environments",
        Some(json!({"name": "named", "image": "/nonexistent/layout"})),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        error_message(&v).contains("no image at /nonexistent/layout"),
        "{v}"
    );
    // A reference this machine does not have, and that is not one of Fission's.
    let (code, _, err) = s.cli(&[
        "env",
        "create",
        "--name",
        "named",
        "--image",
        "acme/runtime",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("image \"acme/runtime\" is not on this machine"),
        "{err}"
    );
    // A directory that is not a layout.
    let (status, v) = image_env(&s, "empty", tmp.path());
    assert_eq!(status, 400, "{v}");
    assert!(error_message(&v).contains("no index.json"), "{v}");
}

#[test]
fn fission_images_run_locally_when_present_and_as_the_bundled_runtime_when_not() {
    let tmp = tempfile::tempdir().unwrap();
    let s = container_server();
    // Not on this machine: Fission's python image runs as the bundled python runtime,
    // and the CLI says so.
    let (code, _, err) = s.cli(&[
        "env",
        "create",
        "--name",
        "py",
        "--image",
        "fission/python-env:1.2",
        "--poolsize",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("image fission/python-env:1.2 is not on this machine; the bundled python runtime runs instead"),
        "{err}"
    );
    let env = s.ok("GET", "/v1/environments/py", None);
    assert_eq!(env["image"], "fission/python-env:1.2", "{env}");
    assert_eq!(
        env["status"]["image"],
        json!({"source": "bundled", "runtime": "python"})
    );
    s.function(
        "pyhello",
        "py",
        "hello.py",
        "import sys\ndef main():\n    return 'python %d' % sys.version_info[0]\n",
        json!({}),
    );
    let r = s.get("/fission-function/pyhello");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "python 3");

    // On this machine (in the server's image directory): the image itself runs.
    let image = build_image(tmp.path(), false, &[]);
    let refs = s.data_dir().join("images/refs/ghcr.io/fission/binary-env");
    std::fs::create_dir_all(&refs).unwrap();
    run(Command::new("cp")
        .arg("-r")
        .arg(&image.layout)
        .arg(refs.join("v9")));
    let (code, _, err) = s.cli(&[
        "env",
        "create",
        "--name",
        "bin",
        "--image",
        "ghcr.io/fission/binary-env:v9",
        "--poolsize",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("image ghcr.io/fission/binary-env:v9 runs from"),
        "{err}"
    );
    s.function("binhello", "bin", "hello.sh", HELLO, json!({}));
    let r = s.get("/fission-function/binhello?from=ref");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "from the image: from=ref\n");
}

/// Changes one byte of a file, keeping its size.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(tmp.path(), false, &[]);
    let s = container_server();

    // The configuration is checked when the environment is created.
    let config = std::fs::read(&image.config).unwrap();
    corrupt(&image.config);
    let (status, v) = image_env(&s, "bad-config", &image.layout);
    assert_eq!(status, 400, "{v}");
    assert!(
        error_message(&v).contains("does not match its digest"),
        "{v}"
    );
    std::fs::write(&image.config, config).unwrap();

    // A layer is checked as it is unpacked: the function's call says why it failed.
    corrupt(&image.layer);
    let (status, v) = image_env(&s, "bad-layer", &image.layout);
    assert_eq!(status, 201, "{v}");
    s.function("hello", "bad-layer", "hello.sh", HELLO, json!({}));
    let r = s.get("/fission-function/hello");
    assert_eq!(r.status(), 503);
    let v: Value = r.json().unwrap();
    let message = error_message(&v);
    assert!(
        message.contains("does not match its digest") && message.contains("environment bad-layer"),
        "{message}"
    );
    assert_eq!(
        unpacked(&s),
        Vec::<String>::new(),
        "nothing half-unpacked is kept"
    );
}

#[test]
fn an_image_instance_does_not_outlive_a_killed_server() {
    let tmp = tempfile::tempdir().unwrap();
    // Like Fission's images, this runtime does not exit when its stdin closes.
    let image = build_image(tmp.path(), false, &["FUSION_NO_STDIN_WATCH=1"]);
    let mut s = container_server();
    let (status, v) = image_env(&s, "img", &image.layout);
    assert_eq!(status, 201, "{v}");
    s.function("hello", "img", "hello.sh", HELLO, json!({}));
    assert_eq!(s.get("/fission-function/hello").status(), 200);
    let pids = s.instance_pids();
    assert!(!pids.is_empty());
    s.kill();
    common::eventually(
        std::time::Duration::from_secs(10),
        "the image's instances end with the server",
        || pids.iter().all(|p| !common::alive(*p)),
    );
}

/// A `command` environment runs in a container too: its program must be in what
/// the container sees (the host's `/usr`, or `/fusion/bin/fusion`), it listens on
/// `$RUNTIME_PORT` in a network namespace of its own, and sees no host files.
#[test]
fn a_command_environment_runs_in_a_container_of_its_own() {
    let s = container_server();
    s.ok(
        "POST",
        "/v1/environments",
        Some(json!({"name": "own", "command": ["/fusion/bin/fusion", "runtime", "binary"], "poolsize": 1})),
    );
    let code = "#!/bin/sh\n[ -e /work ] || [ -e /etc/shadow ] && echo leaked || echo \"contained $(id -u)\"\n";
    s.function("cmd", "own", "cmd.sh", code, json!({}));
    let r = s.get("/fission-function/cmd");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "contained 65534\n");
    let instances = s.instances("cmd");
    assert!(!instances.is_empty());
    for i in instances {
        assert!(
            i["address"]
                .as_str()
                .unwrap_or_default()
                .starts_with("netns:"),
            "{i}"
        );
    }
}

#[test]
fn the_process_backend_refuses_an_image_environment_when_it_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(tmp.path(), false, &[]);
    let s = Server::start_with(&[("FUSION_BACKEND", "process")]);
    let (status, v) = image_env(&s, "img", &image.layout);
    assert_eq!(status, 400, "{v}");
    assert!(
        error_message(&v).contains("only on the container backend"),
        "{v}"
    );
    assert_eq!(s.ok("GET", "/v1/environments", None), json!([]));
}
