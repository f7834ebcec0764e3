//! Fission's `ArchiveUploadSpec`: the files its `include` globs match, relative
//! to the project root (the folder above `specs/` unless `rootdir` says
//! otherwise), as one file when they match exactly one, else zipped.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::model::ArchiveSpec;

/// An archive ready to upload.
pub struct Built {
    pub filename: String,
    pub bytes: Vec<u8>,
}

/// Whether a code path given on the command line is a glob (`src/*.py`), as
/// Fission's CLI takes them: it names no file itself and has a glob's signs.
pub(crate) fn is_glob(path: &Path) -> bool {
    let text = path.to_string_lossy();
    !path.exists() && text.contains(['*', '?', '['])
}

/// What glob `path` matches (sorted), read as Fission reads it; an error when
/// nothing does.
pub(crate) fn glob_matches(path: &Path) -> Result<Vec<PathBuf>> {
    let pattern = as_fission_reads_it(&path.to_string_lossy());
    let mut found = glob::glob(&pattern)
        .map_err(|e| anyhow!("{}: not a glob: {e}", path.display()))?
        .filter_map(|p| p.ok())
        .collect::<Vec<_>>();
    if found.is_empty() {
        bail!("nothing matches {}", path.display());
    }
    found.sort();
    Ok(found)
}

/// The project root of a specs folder: its parent.
pub fn project_root(specdir: &Path) -> PathBuf {
    let abs = std::path::absolute(specdir).unwrap_or_else(|_| specdir.to_path_buf());
    abs.parent().map(Path::to_path_buf).unwrap_or(abs)
}

/// A glob as Fission reads it: with Go's `filepath.Glob`, where a `*` never
/// crosses a `/` and `**` is just `*` (one level), so `src/**` is what is
/// directly in `src`, each going in at the archive's top.
pub(crate) fn as_fission_reads_it(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if !(c == '*' && out.ends_with('*')) {
            out.push(c);
        }
    }
    out
}

/// The paths `spec` includes (sorted, without those `exclude` matches), and
/// what is in the directories among them, checked as `build` packs it.
pub fn matches(spec: &ArchiveSpec, root: &Path) -> Result<Vec<PathBuf>> {
    let selected = select(spec, root)?;
    items(spec, &selected)?;
    Ok(selected.paths)
}

/// What an archive's globs select.
struct Selected {
    /// The top-level matches, sorted.
    paths: Vec<PathBuf>,
    /// What the `exclude` globs match: left out wherever it is, in a matched
    /// directory too.
    excluded: Vec<PathBuf>,
    /// The project root, links resolved: nothing outside it is packed.
    root: PathBuf,
}

fn select(spec: &ArchiveSpec, root: &Path) -> Result<Selected> {
    let root = match &spec.rootdir {
        Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| PathBuf::from(dir)),
        None => root.to_path_buf(),
    };
    // Globs stay below the root: a project cannot pack files from elsewhere on
    // the machine that applies it.
    for pattern in spec.include.iter().chain(&spec.exclude) {
        let p = Path::new(pattern);
        if p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
            bail!(
                "{}: archive {:?}: glob {pattern:?} must stay below the project root (no absolute paths, no `..`)",
                spec.at,
                spec.name
            );
        }
    }
    let canonical_root = root.canonicalize().unwrap_or_else(|_| root.clone());
    let mut excluded = Vec::new();
    for pattern in &spec.exclude {
        let full = root.join(as_fission_reads_it(pattern));
        let found = glob::glob(&full.to_string_lossy())
            .map_err(|e| anyhow!("{}: exclude glob {pattern:?}: {e}", spec.at))?;
        excluded.extend(found.filter_map(|p| p.ok()));
    }
    let mut paths = Vec::new();
    for pattern in &spec.include {
        let full = root.join(as_fission_reads_it(pattern));
        let found = glob::glob(&full.to_string_lossy())
            .map_err(|e| anyhow!("{}: include glob {pattern:?}: {e}", spec.at))?;
        for p in found {
            let p = p.map_err(|e| anyhow!("{}: {e}", spec.at))?;
            let real = p.canonicalize().unwrap_or_else(|_| p.clone());
            if !real.starts_with(&canonical_root) {
                bail!(
                    "{}: archive {:?}: {} is a link out of the project root",
                    spec.at,
                    spec.name,
                    p.display()
                );
            }
            if !excluded.contains(&p) && !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    paths.sort();
    // Each match goes in at the top of the archive under its own name: two of
    // the same name would collide.
    let mut seen = std::collections::HashSet::new();
    for p in &paths {
        if let Some(name) = p.file_name() {
            if !seen.insert(name.to_os_string()) {
                bail!(
                    "{}: archive {:?}: two matches are named {:?} (each goes in at the archive's top level)",
                    spec.at,
                    spec.name,
                    name
                );
            }
        }
    }
    if paths.is_empty() {
        bail!(
            "{}: archive {:?} is empty: nothing under {} matches {:?}",
            spec.at,
            spec.name,
            root.display(),
            spec.include
        );
    }
    Ok(Selected {
        paths,
        excluded,
        root: canonical_root,
    })
}

/// One entry of a zipped archive: its name there, and for a file where its
/// bytes are read (a link's target) and its mode.
enum Item {
    Dir(String),
    File(String, PathBuf, u32),
}

/// Every entry of the zip `build` makes of `selected`: each match at the top
/// under its own name, a directory with what it holds but what `exclude`
/// matches. A link is packed as what it points at (as `fn create --deploy`
/// packs it), when that is inside the project root: one out of it is an
/// error, as at the top.
fn items(spec: &ArchiveSpec, selected: &Selected) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    for path in &selected.paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| anyhow!("{}: {} has no file name", spec.at, path.display()))?;
        walk(spec, selected, path, name, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

fn walk(
    spec: &ArchiveSpec,
    selected: &Selected,
    path: &Path,
    name: String,
    within: &mut Vec<PathBuf>,
    out: &mut Vec<Item>,
) -> Result<()> {
    let real = path
        .canonicalize()
        .with_context(|| format!("{}: cannot read {}", spec.at, path.display()))?;
    if !real.starts_with(&selected.root) {
        bail!(
            "{}: archive {:?}: {} is a link out of the project root",
            spec.at,
            spec.name,
            path.display()
        );
    }
    let meta =
        std::fs::metadata(&real).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        // A link to a directory that holds it would never end.
        if within.contains(&real) {
            bail!(
                "{}: archive {:?}: {} links back to a directory that holds it",
                spec.at,
                spec.name,
                path.display()
            );
        }
        out.push(Item::Dir(format!("{name}/")));
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|e| !selected.excluded.contains(e))
            .collect();
        entries.sort();
        within.push(real);
        for entry in entries {
            let inner = entry.file_name().unwrap_or_default().to_string_lossy();
            walk(
                spec,
                selected,
                &entry,
                format!("{name}/{inner}"),
                within,
                out,
            )?;
        }
        within.pop();
    } else if meta.is_file() {
        use std::os::unix::fs::PermissionsExt;
        out.push(Item::File(name, real, meta.permissions().mode() & 0o777));
    }
    // Sockets, pipes and devices are left out: a package holds files only.
    Ok(())
}

/// Builds the archive: one matched regular file as it is, else a zip with each
/// match at its top level under its own name (folders with what they hold).
pub fn build(spec: &ArchiveSpec, root: &Path) -> Result<Built> {
    let selected = select(spec, root)?;
    let items = items(spec, &selected)?;
    if let [one] = selected.paths.as_slice() {
        if one.is_file() {
            let filename = one
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("{}: {} has no usable file name", spec.at, one.display()))?
                .to_string();
            let bytes =
                std::fs::read(one).with_context(|| format!("cannot read {}", one.display()))?;
            return Ok(Built { filename, bytes });
        }
    }
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    // Fixed times, so the same files make the same archive (and apply stays a no-op).
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default());
    for item in items {
        match item {
            Item::Dir(name) => zip.add_directory(name, options)?,
            Item::File(name, from, mode) => {
                zip.start_file(name, options.unix_permissions(mode))?;
                zip.write_all(
                    &std::fs::read(&from)
                        .with_context(|| format!("cannot read {}", from.display()))?,
                )?;
            }
        }
    }
    let bytes = zip.finish()?.into_inner();
    Ok(Built {
        filename: format!("{}.zip", spec.name),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(include: &[&str]) -> ArchiveSpec {
        ArchiveSpec {
            name: "src".into(),
            rootdir: None,
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: Vec::new(),
            at: crate::spec::load::Location::field("archive"),
        }
    }

    /// The names in the zip `build` makes.
    fn zipped(spec: &ArchiveSpec, root: &Path) -> Vec<String> {
        let built = build(spec, root).unwrap();
        let zip = zip::ZipArchive::new(std::io::Cursor::new(built.bytes)).unwrap();
        let mut names: Vec<String> = zip.file_names().map(str::to_string).collect();
        names.sort();
        names
    }

    #[test]
    fn exclude_reaches_into_an_included_directory() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("sub")).unwrap();
        for f in ["main.py", ".env", "sub/x.py", "cache.pyc"] {
            std::fs::write(app.join(f), f).unwrap();
        }
        let mut s = spec(&["app"]);
        s.exclude = vec!["app/.env".into(), "app/*.pyc".into(), "app/sub".into()];
        assert_eq!(zipped(&s, dir.path()), ["app/", "app/main.py"]);
    }

    #[test]
    fn a_link_inside_the_root_is_packed_as_what_it_points_at_and_one_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("shared")).unwrap();
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("shared/common.py"), "GREETING = 1\n").unwrap();
        std::fs::write(root.join("main.py"), "import common\n").unwrap();
        std::os::unix::fs::symlink("shared/common.py", root.join("common.py")).unwrap();
        std::os::unix::fs::symlink("../shared", root.join("app/lib")).unwrap();
        let s = spec(&["main.py", "common.py", "app"]);
        assert_eq!(
            zipped(&s, root),
            [
                "app/",
                "app/lib/",
                "app/lib/common.py",
                "common.py",
                "main.py"
            ]
        );
        let built = build(&s, root).unwrap();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(built.bytes)).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut zip.by_name("common.py").unwrap(), &mut text).unwrap();
        assert_eq!(text, "GREETING = 1\n");
        // Out of the root, inside a directory: refused, as at the top.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("app/out")).unwrap();
        let e = matches(&s, root).unwrap_err().to_string();
        assert!(e.contains("is a link out of the project root"), "{e}");
        // A link back to a directory that holds it.
        std::fs::remove_file(root.join("app/out")).unwrap();
        std::os::unix::fs::symlink("..", root.join("app/up")).unwrap();
        let e = matches(&spec(&["app"]), root).unwrap_err().to_string();
        assert!(e.contains("links back to a directory that holds it"), "{e}");
    }

    #[test]
    fn a_double_star_is_one_level_as_in_fission() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("lib")).unwrap();
        for f in ["index.js", "build.sh", "lib/util.js"] {
            std::fs::write(app.join(f), f).unwrap();
        }
        let names = |include: &[&str]| -> Vec<String> {
            matches(&spec(include), dir.path())
                .unwrap()
                .iter()
                .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
                .collect()
        };
        let want = ["app/build.sh", "app/index.js", "app/lib"];
        assert_eq!(names(&["app/**"]), want);
        assert_eq!(names(&["app/*"]), want);
        assert_eq!(names(&["app/**/*.js"]), ["app/lib/util.js"]);
    }
}
