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

/// The paths `spec` includes (sorted, without those `exclude` matches).
pub fn matches(spec: &ArchiveSpec, root: &Path) -> Result<Vec<PathBuf>> {
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
    Ok(paths)
}

/// Builds the archive: one matched regular file as it is, else a zip with each
/// match at its top level under its own name (folders with what they hold).
pub fn build(spec: &ArchiveSpec, root: &Path) -> Result<Built> {
    let paths = matches(spec, root)?;
    if let [one] = paths.as_slice() {
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
    for path in &paths {
        let base = path.parent().unwrap_or(Path::new("/"));
        add(&mut zip, base, path, options)?;
    }
    let bytes = zip.finish()?.into_inner();
    Ok(Built {
        filename: format!("{}.zip", spec.name),
        bytes,
    })
}

fn add(
    zip: &mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>,
    base: &Path,
    path: &Path,
    options: zip::write::SimpleFileOptions,
) -> Result<()> {
    let name = path
        .strip_prefix(base)
        .map_err(|_| anyhow!("{} is outside {}", path.display(), base.display()))?
        .to_string_lossy()
        .replace('\\', "/");
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        zip.add_directory(format!("{name}/"), options)?;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            add(zip, base, &entry, options)?;
        }
    } else if meta.is_file() {
        use std::os::unix::fs::PermissionsExt;
        zip.start_file(
            name,
            options.unix_permissions(meta.permissions().mode() & 0o777),
        )?;
        zip.write_all(
            &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        )?;
    }
    // Links and special files are left out: a package holds files only.
    Ok(())
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
