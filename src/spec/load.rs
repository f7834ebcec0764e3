//! Reading a specs folder: every YAML document of every `*.yaml`/`*.yml` file,
//! as JSON values, each with an index from field paths to the line and column
//! where they are written, so every error and warning can point at its place.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use saphyr_parser::{Event, Parser};
use serde::Deserialize;
use serde_json::Value;

/// A place in a spec file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// A field of an object that is not read from a file (a custom resource's
    /// `spec.runtime.image`): said by its path, line 0.
    pub fn field(path: &str) -> Location {
        Location {
            file: PathBuf::from(if path.is_empty() { "metadata" } else { path }),
            line: 0,
            column: 0,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}", self.file.display());
        }
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One YAML document of a spec file.
#[derive(Clone)]
pub struct Document {
    pub value: Value,
    pub file: PathBuf,
    /// The document's own text, and the line of the file it starts on, for
    /// checkers that read the text themselves (their lines are offset by it).
    pub source: String,
    pub first_line: usize,
    /// Where each field is written: `spec.runtime.image` -> its key's position;
    /// `""` is the document itself.
    positions: Positions,
    /// An object read from an API (a custom resource) rather than a file: its
    /// places are field paths.
    object: bool,
}

impl Document {
    /// An object that is not read from a file (a custom resource): every place
    /// is its field path; `source` is its YAML text for checkers that read text.
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub fn object(value: Value) -> Document {
        let source = serde_yaml::to_string(&value).unwrap_or_default();
        Document {
            value,
            file: PathBuf::new(),
            source,
            first_line: 1,
            positions: HashMap::new(),
            object: true,
        }
    }

    /// Whether this is an object read from an API rather than a file.
    pub fn is_object(&self) -> bool {
        self.object
    }

    /// Renames the key `from` of the mapping at `parent` (a dot-separated
    /// path, list items by index) to `to`, with the places of it and of
    /// what is below it.
    pub fn rename_field(&mut self, parent: &str, from: &str, to: &str) {
        let mut at = &mut self.value;
        for seg in parent.split('.').filter(|s| !s.is_empty()) {
            let next = match at {
                Value::Object(m) => m.get_mut(seg),
                Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            };
            let Some(next) = next else { return };
            at = next;
        }
        let Some(map) = at.as_object_mut() else {
            return;
        };
        let Some(v) = map.remove(from) else { return };
        map.insert(to.to_string(), v);
        let join = |k: &str| super::model::field_path(parent, k);
        let (old, new) = (join(from), join(to));
        let moved: Vec<(String, (usize, usize))> = self
            .positions
            .iter()
            .filter(|(k, _)| *k == &old || k.starts_with(&format!("{old}.")))
            .map(|(k, p)| (format!("{new}{}", &k[old.len()..]), *p))
            .collect();
        self.positions
            .retain(|k, _| !(k == &old || k.starts_with(&format!("{old}."))));
        self.positions.extend(moved);
    }

    /// Where `path` (dot-separated, list items by index) is written; the nearest
    /// enclosing field when it is not written (a missing field, say).
    pub fn at(&self, path: &str) -> Location {
        if self.object {
            return Location::field(path);
        }
        let mut p = path;
        loop {
            if let Some(&(line, column)) = self.positions.get(p) {
                return Location {
                    file: self.file.clone(),
                    line,
                    column,
                };
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None if !p.is_empty() => p = "",
                None => {
                    return Location {
                        file: self.file.clone(),
                        line: 1,
                        column: 1,
                    }
                }
            }
        }
    }
}

/// Every spec file under `dir` (recursively, sorted), or `dir` itself when it
/// is a file. Fusion's workflow files (`*.wf.yaml`) are referenced from specs,
/// not read as specs.
pub fn spec_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    if !dir.is_dir() {
        bail!(
            "{} does not exist (create it with `fusion spec init`, or give a folder or file with -f)",
            dir.display()
        );
    }
    let ignore = SpecIgnore::read(dir)?;
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?
        {
            let entry = entry?;
            let p = entry.path();
            // Links are not followed: a spec folder is what is in it.
            let kind = entry.file_type()?;
            let rel = p.strip_prefix(dir).unwrap_or(&p);
            if ignore.ignores(rel, kind.is_dir()) {
                continue;
            }
            if kind.is_dir() {
                stack.push(p);
            } else if kind.is_file() && is_spec_file(&p) {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The folder's `.specignore`, as Fission reads it: gitignore's patterns, one
/// a line (`#` a comment, `!` takes a file back, a trailing `/` only folders,
/// a `/` inside anchors the pattern at the folder, else it matches a name at
/// any depth); the last pattern that matches decides.
#[derive(Default)]
struct SpecIgnore {
    rules: Vec<IgnoreRule>,
}

struct IgnoreRule {
    pattern: glob::Pattern,
    negated: bool,
    only_dirs: bool,
    anchored: bool,
}

impl SpecIgnore {
    fn read(dir: &Path) -> Result<SpecIgnore> {
        let file = dir.join(".specignore");
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SpecIgnore::default()),
            Err(e) => return Err(anyhow!("cannot read {}: {e}", file.display())),
        };
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, line) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let (only_dirs, line) = match line.strip_suffix('/') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let anchored = line.contains('/');
            let line = line.trim_start_matches('/');
            let pattern = glob::Pattern::new(line).map_err(|e| {
                anyhow!(
                    "{}:{}: invalid pattern {line:?}: {e}",
                    file.display(),
                    i + 1
                )
            })?;
            rules.push(IgnoreRule {
                pattern,
                negated,
                only_dirs,
                anchored,
            });
        }
        Ok(SpecIgnore { rules })
    }

    /// Whether `rel` (a path below the folder) is left out.
    fn ignores(&self, rel: &Path, is_dir: bool) -> bool {
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        let name = rel.file_name().map(Path::new).unwrap_or(rel);
        let mut ignored = false;
        for r in &self.rules {
            if r.only_dirs && !is_dir {
                continue;
            }
            let subject = if r.anchored { rel } else { name };
            if r.pattern.matches_path_with(subject, options) {
                ignored = !r.negated;
            }
        }
        ignored
    }
}

fn is_spec_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(".wf.yaml")
        && !name.ends_with(".wf.yml")
}

/// The non-empty documents of one file, with their field positions.
pub fn read_file(file: &Path) -> Result<Vec<Document>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = engine::document::without_bom(&text);
    engine::document::check_yaml(text).map_err(|e| {
        let (line, column) = e.position();
        anyhow!("{}:{line}:{column}: {e}", file.display())
    })?;
    let mut positions = positions(text).map_err(|(line, column, e)| {
        anyhow!("{}:{line}:{column}: invalid YAML: {e}", file.display())
    })?;
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let (doc_positions, first_line, past) = if i < positions.len() {
            std::mem::take(&mut positions[i])
        } else {
            (HashMap::new(), 1, None)
        };
        let lines: Vec<&str> = text.lines().collect();
        let end = past.map_or(lines.len(), |p| (p - 1).min(lines.len()));
        let source = lines[(first_line - 1).min(end)..end].join("\n");
        // Where the document starts, for errors that carry no place of their own.
        let start = doc_positions.get("").copied().unwrap_or((1, 1));
        let mut value = serde_yaml::Value::deserialize(de).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or(start);
            anyhow!("{}:{line}:{column}: invalid YAML: {e}", file.display())
        })?;
        if value.is_null() {
            continue;
        }
        // YAML merge keys (`<<: *defaults`), which the YAML library of
        // Fission's CLI reads: merged, as it merges them.
        value.apply_merge().map_err(|e| {
            anyhow!(
                "{}:{}:{}: invalid YAML: {e}",
                file.display(),
                start.0,
                start.1
            )
        })?;
        let value: Value = serde_json::to_value(value).map_err(|e| {
            anyhow!(
                "{}:{}:{}: a document this program cannot read as JSON (a non-string mapping key?): {e}",
                file.display(),
                start.0,
                start.1
            )
        })?;
        docs.push(Document {
            value,
            file: file.to_path_buf(),
            source,
            first_line,
            positions: doc_positions,
            object: false,
        });
    }
    Ok(docs)
}

/// For each document of `text`, where each field path is written.
/// Field path -> (line, column).
type Positions = HashMap<String, (usize, usize)>;

/// Each document's positions, and the lines it spans (first, and the first
/// line past it, or None at the end of the text).
type DocSpan = (Positions, usize, Option<usize>);

fn positions(text: &str) -> Result<Vec<DocSpan>, (usize, usize, String)> {
    enum Frame {
        /// A mapping; `key` is the key whose value comes next, if any.
        Map {
            path: String,
            key: Option<String>,
            /// Its keys so far: a second one is refused where it is written.
            seen: std::collections::HashSet<String>,
        },
        Seq {
            path: String,
            next: usize,
        },
    }
    fn join(parent: &str, child: &str) -> String {
        if parent.is_empty() {
            child.to_string()
        } else {
            format!("{parent}.{child}")
        }
    }
    let mut docs = Vec::new();
    let mut current: Positions = HashMap::new();
    let mut start_line = 1;
    let mut stack: Vec<Frame> = Vec::new();
    let mut parser = Parser::new_from_str(text);
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| {
            let m = e.marker();
            (m.line(), m.col() + 1, e.info().to_string())
        })?;
        let at = (span.start.line(), span.start.col() + 1);
        // The path of the node this event starts (for scalars, collections and
        // aliases), or None when it is a mapping key.
        let node_path = |stack: &mut Vec<Frame>| -> Option<String> {
            match stack.last_mut() {
                None => Some(String::new()),
                Some(Frame::Seq { path, next }) => {
                    let p = join(path, &next.to_string());
                    *next += 1;
                    Some(p)
                }
                Some(Frame::Map { path, key, .. }) => key.take().map(|k| join(path, &k)),
            }
        };
        match event {
            Event::DocumentStart(_) => {
                current = HashMap::new();
                stack.clear();
                start_line = span.start.line();
            }
            Event::DocumentEnd => {
                // An explicit `...` ends on its own line; an implicit end is
                // where the next document (or the text) starts.
                let end = span.start.line();
                let past = if end <= start_line { None } else { Some(end) };
                docs.push((std::mem::take(&mut current), start_line, past));
            }
            Event::Scalar(value, ..) => match node_path(&mut stack) {
                Some(p) => {
                    current.entry(p).or_insert(at);
                }
                None => {
                    if let Some(Frame::Map { path, key, seen }) = stack.last_mut() {
                        let p = join(path, &value);
                        if !seen.insert(value.to_string()) {
                            let first = current.get(&p).map_or(0, |(line, _)| *line);
                            return Err((
                                at.0,
                                at.1,
                                format!("`{p}` is given twice (first at line {first})"),
                            ));
                        }
                        current.insert(p, at);
                        *key = Some(value.into_owned());
                    }
                }
            },
            Event::Alias(_) => {
                if let Some(p) = node_path(&mut stack) {
                    current.entry(p).or_insert(at);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(event, Event::MappingStart(..));
                let p = match node_path(&mut stack) {
                    Some(p) => p,
                    // A collection used as a mapping key: not addressable by path.
                    None => "\u{0}".to_string(),
                };
                current.entry(p.clone()).or_insert(at);
                stack.push(if is_map {
                    Frame::Map {
                        path: p,
                        key: None,
                        seen: Default::default(),
                    }
                } else {
                    Frame::Seq { path: p, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specignore_leaves_out_what_it_names_as_fission_does() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for f in [
            "a.yaml",
            "ignored.yaml",
            "sub/b.yaml",
            "sub/ignored.yaml",
            "drafts/c.yaml",
            "x.tmp.yaml",
            "keep.tmp.yaml",
            "sub/only/here.yaml",
            "only/here.yaml",
        ] {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "kind: Environment\n").unwrap();
        }
        std::fs::write(
            dir.join(".specignore"),
            "# drafts and scratch files\nignored.yaml\ndrafts/\n*.tmp.yaml\n!keep.tmp.yaml\n/only/here.yaml\n",
        )
        .unwrap();
        let found: Vec<String> = spec_files(dir)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
            .collect();
        assert_eq!(
            found,
            [
                "a.yaml",
                "keep.tmp.yaml",
                "sub/b.yaml",
                "sub/only/here.yaml"
            ]
        );
    }

    #[test]
    fn fields_are_found_where_they_are_written() {
        let text = "kind: A\nmetadata:\n  name: x\nspec:\n  list:\n  - a: 1\n  - {b: 2}\n---\n\n---\nkind: B\n";
        let docs: Vec<Positions> = positions(text).unwrap().into_iter().map(|d| d.0).collect();
        assert_eq!(docs.len(), 3);
        let d = &docs[0];
        assert_eq!(d["kind"], (1, 1));
        assert_eq!(d["metadata.name"], (3, 3));
        assert_eq!(d["spec.list"], (5, 3));
        assert_eq!(d["spec.list.0.a"], (6, 5));
        assert_eq!(d["spec.list.1.b"], (7, 6));
        assert_eq!(docs[2]["kind"], (11, 1));
    }

    #[test]
    fn a_missing_field_points_at_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "# c\nkind: A\nspec:\n  x: 1\n---\n---\nkind: B\n").unwrap();
        let docs = read_file(&file).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].at("spec.y.z").line, 3);
        assert_eq!(docs[0].at("spec.x").line, 4);
        assert_eq!(docs[1].at("kind").line, 7);
        assert_eq!(docs[1].at("nothing").line, 7);
    }

    #[test]
    fn merge_keys_are_merged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("merge.yaml");
        std::fs::write(
            &file,
            "kind: A\nspec:\n  strategy:\n    <<: {ExecutorType: newdeploy, MinScale: 1}\n    MinScale: 2\n",
        )
        .unwrap();
        let docs = read_file(&file).unwrap();
        assert_eq!(
            docs[0].value["spec"]["strategy"],
            serde_json::json!({"ExecutorType": "newdeploy", "MinScale": 2})
        );
    }

    #[test]
    fn a_file_saved_with_a_byte_order_mark_reads_as_without() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bom.yaml");
        std::fs::write(&file, "\u{feff}kind: A\nspec:\n  x: 1\n").unwrap();
        let docs = read_file(&file).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].value["kind"], "A");
        assert_eq!(docs[0].at("spec.x").line, 3);
    }

    #[test]
    fn a_document_json_cannot_hold_says_where_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.yaml");
        std::fs::write(&file, "kind: A\n---\n\n? [a, b]\n: 1\n").unwrap();
        let err = read_file(&file).err().unwrap().to_string();
        assert!(err.contains("keys.yaml:4:1: a document"), "{err}");
    }

    #[test]
    fn yaml_errors_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, "kind: A\nspec: [1, 2\n").unwrap();
        let err = read_file(&file).err().unwrap().to_string();
        assert!(err.contains("bad.yaml:"), "{err}");
        assert!(err.contains("invalid YAML"), "{err}");
    }
}
