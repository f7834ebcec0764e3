//! Test harness: starts the real `fusion server` on free loopback ports in a
//! temporary data directory, and stops it (and so every instance it started)
//! when dropped.
#![allow(dead_code)]

#[cfg(feature = "kubernetes")]
pub mod kube_mock;
pub mod probe;
pub mod vendored;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_fusion");

pub struct Server {
    pub child: Option<Child>,
    pub router: String,
    pub api: String,
    pub data: PathBuf,
    /// The API token, read from the data directory once the server listens.
    pub token: String,
    _tmp: Option<tempfile::TempDir>,
    extra: Vec<(String, String)>,
    /// The open-file limit to start the server with (through `sh -c ulimit`).
    nofile: Option<u64>,
    pub http: reqwest::blocking::Client,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// `env` adds FUSION_* settings (e.g. FUSION_LEASE_WAIT_MS).
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        Server::start_limited(None, env)
    }

    /// As `start_with`, under an open-file limit of `nofile` when given.
    pub fn start_limited(nofile: Option<u64>, env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data = tmp.path().join("data");
        let extra = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut s = Server {
            child: None,
            router: String::new(),
            api: String::new(),
            data,
            token: String::new(),
            _tmp: Some(tmp),
            extra,
            nofile,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        };
        s.launch();
        s
    }

    /// Sets a FUSION_* setting for the next launch (as `start_with` does).
    #[allow(dead_code)]
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra.retain(|(k, _)| k != key);
        self.extra.push((key.to_string(), value.to_string()));
    }

    /// Starts (again) on the same data directory.
    pub fn launch(&mut self) {
        self.launch_on("127.0.0.1:0", "127.0.0.1:0");
    }

    /// Starts again on the same data directory and the same addresses (what a
    /// client that knew the server before still reaches).
    pub fn relaunch_in_place(&mut self) {
        let router = self.router.trim_start_matches("http://").to_string();
        let api = self.api.trim_start_matches("http://").to_string();
        self.launch_on(&router, &api);
    }

    fn launch_on(&mut self, router: &str, api: &str) {
        let mut cmd = match self.nofile {
            None => Command::new(BIN),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", "ulimit -n \"$0\" && exec \"$@\""])
                    .arg(n.to_string())
                    .arg(BIN);
                sh
            }
        };
        cmd.args(["server", "--data-dir"])
            .arg(&self.data)
            .args(["--router-listen", router, "--api-listen", api])
            .env("FUSION_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start fusion server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("the server printed its listening line");
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .to_string()
        };
        self.router = field("router=");
        self.api = field("api=");
        self.token = std::fs::read_to_string(self.data.join("token"))
            .expect("the server wrote its token before listening")
            .trim()
            .to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn stop(&mut self) {
        assert!(
            self.terminate(Duration::from_secs(20)),
            "the server did not stop within 20 s of SIGTERM"
        );
    }

    /// Waits for a server already told to stop (a second signal would make it
    /// stop at once, without the rest of its grace).
    #[allow(dead_code)]
    pub fn wait_stopped(&mut self) {
        let mut child = self.child.take().expect("a running server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not stop within 20 s of its signal");
    }

    /// SIGTERM, wait up to `limit`, then SIGKILL; whether it exited by itself.
    fn terminate(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }
    pub fn router_url(&self, path: &str) -> String {
        format!("{}{path}", self.router)
    }

    /// A request to the API listener carrying the token.
    pub fn api(&self, method: &str, path: &str) -> reqwest::blocking::RequestBuilder {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        self.http
            .request(m, self.api_url(path))
            .bearer_auth(&self.token)
    }

    /// A JSON API call; returns the status and the parsed body (Null when empty).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.api(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().expect("API reachable");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Uploads code and returns its package reference.
    pub fn upload(&self, filename: &str, bytes: &[u8]) -> Value {
        let resp = self
            .api("POST", "/v1/packages")
            .query(&[("filename", filename)])
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        resp.json().unwrap()
    }

    pub fn env(&self, name: &str, runtime: &str, poolsize: usize) {
        self.ok(
            "POST",
            "/v1/environments",
            Some(serde_json::json!({"name": name, "runtime": runtime, "poolsize": poolsize})),
        );
    }

    /// Creates a function from code; `extra` fields are merged into the request.
    pub fn function(&self, name: &str, env: &str, filename: &str, code: &str, extra: Value) {
        let package = self.upload(filename, code.as_bytes());
        let mut body = serde_json::json!({"name": name, "env": env, "package": package});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        self.ok("POST", "/v1/functions", Some(body));
    }

    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.http
            .get(self.router_url(path))
            .send()
            .expect("router reachable")
    }

    /// Runs the CLI against this server, with its token in FUSION_TOKEN; returns
    /// (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("FUSION_URL", &self.api)
            .env("FUSION_TOKEN", &self.token)
            .output()
            .expect("run fusion CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the CLI as `cli` does, in `dir` (for commands that read `specs/`).
    pub fn cli_in(&self, dir: &Path, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env("FUSION_URL", &self.api)
            .env("FUSION_TOKEN", &self.token)
            .output()
            .expect("run fusion CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn instances(&self, function: &str) -> Vec<Value> {
        match self.ok("GET", &format!("/v1/functions/{function}/instances"), None) {
            Value::Array(a) => a,
            other => panic!("instances: {other}"),
        }
    }

    /// Every instance process the server runs (generic and specialized).
    pub fn instance_pids(&self) -> Vec<u32> {
        match self.ok("GET", "/v1/instances", None) {
            Value::Array(a) => a
                .iter()
                .filter_map(|i| i["pid"].as_u64())
                .map(|p| p as u32)
                .collect(),
            other => panic!("instances: {other}"),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(15));
        remove_containers_of(&self.data);
    }
}

/// The containers of the server on `data`, as its next start would find them
/// (running, stopped, or half created): their names start with `fusion-` and 8
/// hex digits of the data dir's sha256.
pub fn containers_of(data: &Path) -> Vec<String> {
    use sha2::Digest;
    let Ok(data) = data.canonicalize() else {
        return Vec::new();
    };
    let digest = sha2::Sha256::digest(data.as_os_str().as_encoded_bytes());
    let prefix: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let prefix = format!("fusion-{prefix}-");
    let listed = Command::new("runc")
        .args(["list", "-q"])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut ids: Vec<String> = listed.lines().map(str::to_string).collect();
    if let Ok(dir) = std::fs::read_dir("/run/runc") {
        ids.extend(
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
    ids.sort();
    ids.dedup();
    ids.retain(|id| id.starts_with(&prefix));
    ids
}

/// Deletes the containers of the server on `data`, as its next start would (a
/// server killed with SIGKILL leaves stopped and half-created containers).
pub fn remove_containers_of(data: &Path) {
    for id in containers_of(data) {
        let _ = Command::new("runc")
            .args(["delete", "-f", &id])
            .stderr(Stdio::null())
            .status();
        let state = Path::new("/run/runc").join(&id);
        if !state.join("state.json").exists() {
            let _ = std::fs::remove_dir_all(state);
        }
        // A half-created container's cgroups are left empty.
        for controller in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(controller.path().join("fusion").join(&id));
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup/fusion").join(&id));
    }
}

pub fn signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// Polls `cond` until it holds or `limit` passes; for states that have no event to
/// wait on (a process gone, an instance reaped).
pub fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

impl Server {
    /// Stores a workflow (YAML) under `name`; panics unless created.
    pub fn workflow(&self, name: &str, yaml: &str) {
        let resp = self
            .api("POST", "/v1/workflows")
            .query(&[("name", name)])
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        assert_eq!(
            status,
            201,
            "create workflow {name}: {}",
            resp.text().unwrap_or_default()
        );
    }

    /// Invokes a workflow through the router with a text body; returns status and body.
    pub fn invoke(&self, name: &str, content_type: &str, body: &str) -> (u16, String) {
        let r = self
            .http
            .post(self.router_url(&format!("/fission-function/{name}")))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// Starts a run asynchronously; returns its id.
    /// Starts workflow `name` in the background through the API's invoke
    /// with a JSON input (`X-Async`); asserts the 202 and answers the run id.
    pub fn invoke_async(&self, name: &str, input: &Value) -> String {
        let r = self
            .api("POST", &format!("/v1/workflows/{name}/invoke"))
            .header("X-Async", "true")
            .json(input)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let v: Value = r.json().unwrap();
        v["id"].as_str().expect("a run id").to_string()
    }

    pub fn start_async(&self, name: &str, body: &str) -> String {
        let r = self
            .http
            .post(self.router_url(&format!("/fission-function/{name}")))
            .header("X-Async", "true")
            .header("content-type", "text/plain")
            .body(body.to_string())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let v: Value = r.json().unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        // The run is followed on the API listener, by its absolute URL.
        assert_eq!(location, self.api_url(&format!("/v1/runs/{id}")));
        assert_eq!(v["location"], location.as_str());
        let run = self
            .http
            .get(&location)
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        assert_eq!(run.status().as_u16(), 200, "GET {location}");
        id
    }

    pub fn run(&self, id: &str) -> Value {
        self.ok("GET", &format!("/v1/runs/{id}"), None)
    }

    /// The callback path of run `id`'s task `task`, once it waits on one.
    pub fn callback_path(&self, id: &str, task: &str) -> String {
        let mut path = String::new();
        eventually(
            Duration::from_secs(30),
            "the task waits on a callback",
            || {
                let run = self.run(id);
                let found = run["tasks"]
                    .as_array()
                    .and_then(|ts| ts.iter().find(|t| t["id"] == task))
                    .cloned()
                    .unwrap_or(Value::Null);
                match found["callback"]["path"].as_str() {
                    Some(p) => {
                        path = p.to_string();
                        true
                    }
                    None => false,
                }
            },
        );
        path
    }

    /// Waits until the run has ended (its status is no longer `running`).
    pub fn wait_run(&self, id: &str, limit: Duration) -> Value {
        let mut last = Value::Null;
        eventually(limit, &format!("run {id} ends"), || {
            last = self.run(id);
            last["status"] != "running"
        });
        last
    }
}
