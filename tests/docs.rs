//! The documentation's commands, run as written against `fusion up` with
//! workflow-examples/ applied: every `$ curl` example of
//! workflow-examples/README.md must answer what is written under it, and the
//! README's walk-through (its `sh` blocks, as one script) must run through, each
//! curl line answering what its `# -> ` comment says, as must the README's other
//! curl lines. So the docs cannot drift.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{remove_containers_of, signal, BIN};

/// Where the docs say the listeners are (the defaults).
const DOC_ROUTER: &str = "http://127.0.0.1:8888";
const DOC_API: &str = "http://127.0.0.1:8889";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `fusion up` in a directory of its own (its data dir is `./.fusion` there, as
/// for a user), on free ports, with the repository's workflow-examples/.
struct Up {
    child: Option<Child>,
    router: String,
    api: String,
    dir: tempfile::TempDir,
}

impl Up {
    fn start() -> Up {
        let dir = tempfile::tempdir().unwrap();
        // The walk-through uses paths relative to the repository's root.
        std::os::unix::fs::symlink(
            repo().join("workflow-examples"),
            dir.path().join("workflow-examples"),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .args([
                "up",
                "--router-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ])
            .current_dir(dir.path())
            .env("FUSION_LOG", "warn")
            .env_remove("FUSION_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut up = Up {
            child: Some(child),
            router: String::new(),
            api: String::new(),
            dir,
        };
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let line = line.trim();
            if let Some(url) = line.strip_prefix("router: ") {
                up.router = url.to_string();
            }
            if let Some(rest) = line.strip_prefix("API:") {
                up.api = rest.split_whitespace().next().unwrap().to_string();
            }
            if line.starts_with("Stop with") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        assert!(
            up.router.starts_with("http") && up.api.starts_with("http"),
            "fusion up did not print its URLs"
        );
        up
    }

    /// `text` with the documented listener addresses replaced by this server's.
    fn localize(&self, text: &str) -> String {
        text.replace(DOC_ROUTER, &self.router)
            .replace(DOC_API, &self.api)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_containers_of(&self.dir.path().join(".fusion"));
    }
}

/// Whether `actual` is the documented `expected` answer: line by line, trailing
/// spaces aside, where `...` in a line of `expected` stands for any text.
fn answers(expected: &str, actual: &str) -> bool {
    let expected: Vec<&str> = expected.trim_end_matches('\n').lines().collect();
    let actual: Vec<&str> = actual.trim_end_matches('\n').lines().collect();
    expected.len() == actual.len()
        && expected
            .iter()
            .zip(&actual)
            .all(|(e, a)| line_matches(e.trim_end(), a.trim_end()))
}

fn line_matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split("...").collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || actual.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &actual[first.len()..];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Runs `script` with bash (`-e`) in `dir`, with `fusion` on PATH; at most 3
/// minutes. Returns (success, stdout, stderr).
fn run_script(dir: &Path, script: &str, env: &[(&str, &Path)]) -> (bool, String, String) {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut cmd = Command::new("bash");
    cmd.args(["-e", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("FUSION_TOKEN")
        .env_remove("FUSION_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // Read both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    (status.is_some_and(|s| s.success()), out, err)
}

/// The `$ command` examples of a markdown file's `console` blocks, each with the
/// answer written under it (up to a blank line, the next `$ ` or the block's end).
fn transcript_examples(markdown: &str) -> Vec<(String, String)> {
    let mut examples = Vec::new();
    let mut in_block = false;
    let mut current: Option<(String, String)> = None;
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_block = !in_block && line.trim() == "```console";
            examples.extend(current.take());
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            examples.extend(current.take());
            current = Some((cmd.to_string(), String::new()));
        } else if line.trim().is_empty() {
            examples.extend(current.take());
        } else if let Some((_, answer)) = current.as_mut() {
            answer.push_str(line);
            answer.push('\n');
        }
    }
    examples
}

/// The README's walk-through: its `sh` blocks, in order, as one script.
fn walk_through(readme: &str) -> String {
    let start = readme
        .find("\n## Walk-through")
        .expect("a Walk-through section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut script = String::new();
    let mut in_sh = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if in_sh {
            script.push_str(line);
            script.push('\n');
        }
    }
    script
}

#[test]
fn every_documented_curl_answers_as_documented() {
    let up = Up::start();

    // workflow-examples/: no curl line outside README.md, where each has its answer.
    for entry in walk_files(&repo().join("workflow-examples")) {
        if entry.file_name().is_some_and(|n| n == "README.md") {
            continue;
        }
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        assert!(
            !text.contains("curl "),
            "{}: a curl line without its answer; put it in workflow-examples/README.md",
            entry.display()
        );
    }
    let doc = std::fs::read_to_string(repo().join("workflow-examples/README.md")).unwrap();
    let examples = transcript_examples(&doc);
    assert!(examples.len() >= 15, "{examples:?}");
    let mut wrong = Vec::new();
    for (cmd, expected) in &examples {
        assert!(cmd.starts_with("curl "), "{cmd}");
        let (ok, out, err) = run_script(up.dir.path(), &up.localize(cmd), &[]);
        if !ok || !answers(&up.localize(expected), &out) {
            wrong.push(format!(
                "$ {cmd}\n--- documented:\n{expected}--- answered:\n{out}\n{err}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The README's walk-through, as a user pastes it after `fusion up` (which
    // this test has started: its own line is left out, and so is `cargo`).
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let out_dir = up.dir.path().join("answers");
    std::fs::create_dir(&out_dir).unwrap();
    let mut script = String::new();
    let mut documented = Vec::new();
    for line in walk_through(&readme).lines() {
        if line.starts_with("cargo ") || line.starts_with("fusion up") {
            continue;
        }
        let line = up.localize(line);
        match line.split_once(" # -> ") {
            Some((cmd, answer)) if cmd.starts_with("curl ") => {
                script.push_str(&format!(
                    "{} > \"$ANSWERS/{}\"\n",
                    cmd.trim_end(),
                    documented.len()
                ));
                documented.push((cmd.trim_end().to_string(), answer.to_string()));
            }
            _ => {
                assert!(
                    !line.starts_with("curl "),
                    "a walk-through curl line without its `# -> ` answer: {line}"
                );
                script.push_str(&line);
                script.push('\n');
            }
        }
    }
    assert!(documented.len() >= 4, "{script}");
    let (ok, out, err) = run_script(up.dir.path(), &script, &[("ANSWERS", &out_dir)]);
    assert!(
        ok,
        "the walk-through failed:\n{script}\n--- stdout:\n{out}\n--- stderr:\n{err}"
    );
    for (i, (cmd, expected)) in documented.iter().enumerate() {
        let actual = std::fs::read_to_string(out_dir.join(i.to_string())).unwrap();
        assert!(
            answers(&up.localize(expected), &actual),
            "{cmd}\n--- documented:\n{expected}\n--- answered:\n{actual}"
        );
    }

    // The README's other curl lines, each on its own with the token exported as
    // the README says just before.
    let walk = walk_through(&readme);
    let others: Vec<&str> = readme
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl ") && !walk.contains(*l))
        .collect();
    assert!(!others.is_empty());
    for line in others {
        let (cmd, expected) = line
            .split_once(" # -> ")
            .unwrap_or_else(|| panic!("a README curl line without its `# -> ` answer: {line}"));
        let script = format!(
            "export FUSION_TOKEN=$(cat .fusion/token)\n{}",
            up.localize(cmd)
        );
        let (ok, out, err) = run_script(up.dir.path(), &script, &[]);
        assert!(
            ok && answers(&up.localize(expected), &out),
            "{line}\n--- answered:\n{out}\n{err}"
        );
    }
}

/// Every file below `dir`.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_documented_answer_matches_with_wildcards_and_only_then() {
    assert!(answers("hi\n", "hi"));
    assert!(answers("< ... >", "< Fortune favors the bold. >"));
    assert!(answers(
        r#"{"id":"...","location":"/v1/runs/...","status":"running"}"#,
        r#"{"id":"01ab","location":"/v1/runs/01ab","status":"running"}"#
    ));
    assert!(answers("...", "anything"));
    assert!(!answers("hi", "{}"));
    assert!(!answers("a\nb", "a"));
    assert!(!answers("< ... >", "< x"));
    assert!(!answers("ab...ba", "aba"));
}
