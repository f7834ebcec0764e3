//! Function code, stored content-addressed (sha256) under the data directory.
//! A package is a directory `packages/<sha256>/` holding either the single file
//! under its own name, or the unpacked zip archive. Unpacking refuses path escapes,
//! links and archives past the size limits. A build's output directory is
//! stored the same way (`put_dir`), under the same limits. Nothing holds a
//! count of who uses a package: packages nothing uses any more are found and
//! removed by `prune` (see `crate::prune`).

use std::collections::HashSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::resources::{PackageKind, PackageRef};

/// Limits on what a package may be.
#[derive(Debug, Clone, Copy)]
pub struct PackageLimits {
    pub max_upload: u64,
    pub max_unpacked: u64,
    pub max_entries: usize,
}

impl Default for PackageLimits {
    fn default() -> Self {
        PackageLimits {
            max_upload: 64 << 20,
            max_unpacked: 256 << 20,
            max_entries: 10_000,
        }
    }
}

#[derive(Clone)]
pub struct PackageStore {
    root: PathBuf,
    limits: PackageLimits,
    /// Held shared by whoever starts to use a stored package (a new reference
    /// to it, its upload again), and exclusively by `prune` while it looks at
    /// one package and moves it away: a package is claimed either before that
    /// look (and the claim's fresh time keeps it) or after it is gone (and
    /// the claim fails, as for a package never uploaded).
    claims: Arc<RwLock<()>>,
}

/// What `prune` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// The packages removed (their sha256).
    pub removed: Vec<String>,
    /// The bytes of their files.
    pub bytes: u64,
    /// Packages kept: in use, or stored or used too recently to tell.
    pub kept: usize,
    /// The unpacked images removed (`sha256-<hex>`, under `<data>/images`).
    pub images_removed: Vec<String>,
    /// The bytes of their files.
    pub image_bytes: u64,
}

/// What a package removed by `prune` is renamed to before its files go: a
/// name uploads and backups leave alone (as every `.tmp-` name), and that
/// the next `prune` removes if a crash came first.
const PRUNING: &str = ".tmp-prune-";

/// How old an upload's work directory must be to be taken for a crash's leftover.
const STALE_WORK: Duration = Duration::from_secs(3600);

/// The file that marks a stored archive's tree as whole (written last, so a
/// tree without it is a crash's leftover). Not part of the code: never copied
/// or sent with it.
pub const COMPLETE: &str = ".complete";

pub fn validate_filename(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "package file name {name:?} must be a plain file name"
        )))
    }
}

/// Whether `bytes` start as a zip archive does (a local file header, or the
/// end of an empty archive's central directory).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

impl PackageStore {
    pub fn open(root: PathBuf, limits: PackageLimits) -> Result<PackageStore> {
        std::fs::create_dir_all(&root).map_err(|e| Error::Storage(e.to_string()))?;
        Ok(PackageStore {
            root,
            limits,
            claims: Arc::default(),
        })
    }

    pub fn limits(&self) -> PackageLimits {
        self.limits
    }

    /// Stores code. A zip archive (by its magic bytes) is unpacked; anything else is
    /// kept as the single file `filename`.
    pub fn put(&self, filename: &str, bytes: &[u8]) -> Result<PackageRef> {
        if bytes.len() as u64 > self.limits.max_upload {
            return Err(Error::TooLarge(format!(
                "package of {} bytes is larger than the limit of {} bytes",
                bytes.len(),
                self.limits.max_upload
            )));
        }
        if bytes.is_empty() {
            return Err(Error::Invalid("package is empty".into()));
        }
        let sha = hex(&Sha256::digest(bytes));
        let dir = self.root.join(&sha);
        let archive = is_zip(bytes);
        if !archive && filename.to_ascii_lowercase().ends_with(".zip") {
            // Stored as one file, it would be loaded as code and fail at every call.
            return Err(Error::Invalid(format!(
                "{filename} is named as a zip archive but is not one (a zip file starts with PK)"
            )));
        }
        if bytes.starts_with(b"PK\x05\x06") {
            // An end of central directory first: no entry before it.
            return Err(Error::Invalid(
                "the archive holds no files (an empty directory?)".into(),
            ));
        }
        let reference = PackageRef {
            sha256: sha.clone(),
            kind: if archive {
                PackageKind::Archive
            } else {
                PackageKind::File
            },
            filename: if archive {
                None
            } else {
                validate_filename(filename)?;
                Some(filename.to_string())
            },
        };
        if archive {
            let _claim = self.claim_lock();
            if dir.join(COMPLETE).exists() {
                touch(&dir);
                return Ok(reference);
            }
        }
        // Unpack into a temporary sibling and rename, so a crash never leaves a
        // half-written package under its final name.
        static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Unique per upload: two uploads of the same code may run at once.
        let tmp = self
            .root
            .join(format!(".tmp-{sha}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io)?;
        let result = if archive {
            unpack_zip(bytes, &tmp, self.limits)
        } else {
            write_file(&tmp.join(filename), bytes)
        };
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let _claim = self.claim_lock();
        if archive {
            std::fs::write(tmp.join(COMPLETE), b"").map_err(io)?;
            if std::fs::rename(&tmp, &dir).is_err() {
                if dir.join(COMPLETE).exists() {
                    // Another upload of the same code finished first: same content.
                    let _ = std::fs::remove_dir_all(&tmp);
                } else {
                    // A half-written leftover of a crash: replace it.
                    let _ = std::fs::remove_dir_all(&dir);
                    std::fs::rename(&tmp, &dir).map_err(io)?;
                }
            }
        } else {
            // Several names may share one content: file packages keep each name.
            std::fs::create_dir_all(&dir).map_err(io)?;
            std::fs::rename(tmp.join(filename), dir.join(filename)).map_err(io)?;
            let _ = std::fs::remove_dir_all(&tmp);
            // The name may have been there already (the directory unchanged).
            touch(&dir);
        }
        Ok(reference)
    }

    /// Stores the directory `dir` (a build's output) as an archive package and
    /// removes it: its sha256 is over its paths, executable bits and contents,
    /// so the same output is one package. Held to the limits of an unpacked
    /// upload; symbolic links are left out (a package holds files), and how many
    /// were is answered beside the reference.
    pub fn put_dir(&self, dir: &Path) -> Result<(PackageRef, usize)> {
        // The build makes `dir`: made a link to a directory elsewhere, the
        // server (root) would read, strip, chown and move that directory
        // instead. Its processes are gone by now, so it stays what it is here.
        let meta = std::fs::symlink_metadata(dir).map_err(io)?;
        if !meta.is_dir() {
            return Err(Error::Invalid(
                "the build's output ($DEPLOY_PKG) is not a directory but a link or another file: a build script makes it a directory (`cp -r $SRC_PKG $DEPLOY_PKG`)".into(),
            ));
        }
        let (mut files, links) = collect_tree(dir, self.limits.max_entries)?;
        files.sort();
        let mut total = 0u64;
        let mut h = Sha256::new();
        for (rel, is_dir) in &files {
            let path = dir.join(rel);
            let name = rel.to_string_lossy();
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            if *is_dir {
                h.update(b"d");
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(io)?;
            total += meta.len();
            if total > self.limits.max_unpacked {
                return Err(Error::TooLarge(format!(
                    "the build's output is larger than the limit of {} bytes",
                    self.limits.max_unpacked
                )));
            }
            use std::os::unix::fs::PermissionsExt;
            h.update(if meta.permissions().mode() & 0o111 != 0 {
                b"x"
            } else {
                b"f"
            });
            let mut file = std::fs::File::open(&path).map_err(io)?;
            let mut content = Sha256::new();
            std::io::copy(&mut file, &mut content).map_err(io)?;
            h.update(content.finalize());
        }
        let sha = hex(&h.finalize());
        let reference = PackageRef {
            sha256: sha.clone(),
            kind: PackageKind::Archive,
            filename: None,
        };
        let target = self.root.join(&sha);
        {
            let _claim = self.claim_lock();
            if target.join(COMPLETE).exists() {
                touch(&target);
                let _ = std::fs::remove_dir_all(dir);
                return Ok((reference, links));
            }
        }
        // What is not part of the package goes before it is one.
        drop_links(dir)?;
        own_by_server(dir);
        std::fs::write(dir.join(COMPLETE), b"").map_err(io)?;
        let _claim = self.claim_lock();
        if std::fs::rename(dir, &target).is_err() {
            if target.join(COMPLETE).exists() {
                // Another build of the same output finished first: same content.
                let _ = std::fs::remove_dir_all(dir);
            } else {
                // A half-written leftover of a crash: replace it.
                let _ = std::fs::remove_dir_all(&target);
                std::fs::rename(dir, &target).map_err(io)?;
            }
        }
        Ok((reference, links))
    }

    /// `path`, for a package about to be used by something new (a function, a
    /// named package, a build's reuse): `prune` keeps it from now on for as
    /// long as it keeps what was just stored, and this fails if it was
    /// removed.
    pub fn claim(&self, package: &PackageRef) -> Result<PathBuf> {
        let _claim = self.claim_lock();
        let path = self.path(package)?;
        touch(&self.root.join(&package.sha256));
        Ok(path)
    }

    fn claim_lock(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.claims.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes every package not in `used` that was stored or claimed more
    /// than `grace` ago (a younger one may be an upload whose function is
    /// not made yet), and what crashes left of uploads and earlier prunes.
    pub fn prune(&self, used: &HashSet<String>, grace: Duration) -> Result<Pruned> {
        let mut out = Pruned::default();
        let now = SystemTime::now();
        let old = |path: &Path| {
            std::fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= grace)
        };
        // An upload's own work, left by a crash; none takes an hour.
        let stale = |path: &Path| {
            std::fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= STALE_WORK)
        };
        static PRUNES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        for entry in std::fs::read_dir(&self.root).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(PRUNING) || (name.starts_with(".tmp-") && stale(&path)) {
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            if used.contains(&name) {
                out.kept += 1;
                continue;
            }
            let n = PRUNES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let away = self
                .root
                .join(format!("{PRUNING}{name}-{}-{n}", std::process::id()));
            {
                let _look = self.claims.write().unwrap_or_else(|e| e.into_inner());
                if !old(&path) {
                    out.kept += 1;
                    continue;
                }
                std::fs::rename(&path, &away).map_err(io)?;
            }
            // Gone from here on (renamed away): what a failed removal leaves
            // under that name, the next prune removes.
            out.bytes += tree_bytes(&away);
            let _ = std::fs::remove_dir_all(&away);
            out.removed.push(name);
        }
        Ok(out)
    }

    /// The path a runtime loads: the file of a file package, the directory of an archive.
    pub fn path(&self, package: &PackageRef) -> Result<PathBuf> {
        let dir = self.root.join(&package.sha256);
        let path = match (&package.kind, &package.filename) {
            (PackageKind::File, Some(f)) => dir.join(f),
            _ => dir,
        };
        if path.exists() {
            Ok(path)
        } else {
            Err(Error::NotFound {
                kind: "package",
                name: package.sha256.clone(),
            })
        }
    }
}

/// Every file and directory under `dir` as (relative path, is a directory);
/// links are counted, not followed.
/// How deep a build's output may nest its directories.
const MAX_DEPTH: usize = 64;

/// The files and directories under `dir` (paths relative to it, directory
/// or not) and how many entries are neither; at most `max_entries`, nested at
/// most `MAX_DEPTH` deep. Walked without recursion: what a build made is
/// untrusted, and a tree of any depth must be refused, not followed.
fn collect_tree(dir: &Path, max_entries: usize) -> Result<(Vec<(PathBuf, bool)>, usize)> {
    let mut out = Vec::new();
    let mut links = 0usize;
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).map_err(io)? {
            let e = e.map_err(io)?;
            let kind = e.file_type().map_err(io)?;
            let path = rel.join(e.file_name());
            if kind.is_dir() {
                if path.components().count() > MAX_DEPTH {
                    return Err(Error::TooLarge(format!(
                        "the build's output nests directories deeper than the limit of {MAX_DEPTH}"
                    )));
                }
                out.push((path.clone(), true));
                pending.push(path);
            } else if kind.is_file() {
                out.push((path, false));
            } else {
                links += 1;
            }
            if out.len() > max_entries {
                return Err(Error::TooLarge(format!(
                    "the build made more than the limit of {max_entries} files and directories"
                )));
            }
        }
    }
    Ok((out, links))
}

/// Removes everything under `dir` that is neither a file nor a directory.
fn drop_links(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let kind = e.file_type().map_err(io)?;
        if kind.is_dir() {
            drop_links(&e.path())?;
        } else if !kind.is_file() {
            std::fs::remove_file(e.path()).map_err(io)?;
        }
    }
    Ok(())
}

/// Gives a stored tree to the server's user (a build ran as someone else, who
/// must not keep write access to code instances load), where it can.
fn own_by_server(dir: &Path) {
    if !crate::sys::is_root() {
        return;
    }
    let _ = std::os::unix::fs::lchown(dir, Some(0), Some(0));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|k| k.is_dir()) {
                own_by_server(&e.path());
            } else {
                let _ = std::os::unix::fs::lchown(e.path(), Some(0), Some(0));
            }
        }
    }
}

/// Copies the tree (or the single file) at `from` into the directory `to`:
/// files and directories only, executable bits kept.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = std::fs::metadata(from).map_err(io)?;
    if meta.is_file() {
        let name = from
            .file_name()
            .ok_or_else(|| Error::Internal(format!("{from:?} has no name")))?;
        std::fs::copy(from, to.join(name)).map_err(io)?;
        return Ok(());
    }
    for e in std::fs::read_dir(from).map_err(io)? {
        let e = e.map_err(io)?;
        let kind = e.file_type().map_err(io)?;
        let name = e.file_name();
        if name == COMPLETE {
            continue;
        }
        let target = to.join(&name);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(io)?;
            copy_tree(&e.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(e.path(), &target).map_err(io)?;
        }
    }
    Ok(())
}

fn io(e: std::io::Error) -> Error {
    Error::Storage(e.to_string())
}

/// Marks `dir` as used now (its modification time), for `prune`'s grace.
pub(crate) fn touch(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.set_modified(SystemTime::now());
    }
}

/// The bytes of the files under `top`, walked without recursion.
pub(crate) fn tree_bytes(top: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![top.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => pending.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(io)?;
    set_executable(path)
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io)
}

/// A path inside the archive as a relative path with only normal components, or
/// an error naming the entry that tries to escape.
fn safe_relative(name: &str) -> Result<PathBuf> {
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "archive entry {name:?} points outside the archive"
                )))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Error::Invalid(format!(
            "archive entry {name:?} has no name"
        )));
    }
    // As for a build's output; and a name the file system takes, refused
    // here rather than failing as the server's own error when written.
    let shown = || name.chars().take(80).collect::<String>();
    if out.components().count() > MAX_DEPTH {
        return Err(Error::Invalid(format!(
            "archive entry {:?}... nests directories deeper than the limit of {MAX_DEPTH}",
            shown()
        )));
    }
    if out.as_os_str().len() > MAX_ENTRY_NAME || out.components().any(|c| c.as_os_str().len() > 255)
    {
        return Err(Error::Invalid(format!(
            "archive entry {:?}... has a name longer than the file system takes ({MAX_ENTRY_NAME} bytes, 255 for each part)",
            shown()
        )));
    }
    Ok(out)
}

/// The longest path an archive's entry may have, in bytes.
const MAX_ENTRY_NAME: usize = 2048;

/// An archive whose entries need one path to be both a file and a directory
/// (`a` and `a/b`) is invalid: refuse it before the file system does.
fn refuse_clash(dest: &Path, rel: &Path, name: &str, is_dir: bool) -> Result<()> {
    let clash = || {
        Error::Invalid(format!(
            "archive entry {name:?} clashes with another entry: one path cannot be both a file and a directory"
        ))
    };
    let mut at = dest.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let last = i + 1 == parts.len();
        match std::fs::symlink_metadata(&at) {
            Err(_) => return Ok(()),
            Ok(m) if !last && !m.is_dir() => return Err(clash()),
            Ok(m) if last && m.is_dir() != is_dir => return Err(clash()),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Why a bounded copy stopped.
enum Copy {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies at most `budget + 1` bytes from `from` to `to` through one fixed
/// buffer and answers how many were copied (more than `budget` means too many).
fn copy_bounded(
    from: &mut impl Read,
    to: &mut impl std::io::Write,
    budget: u64,
) -> std::result::Result<u64, Copy> {
    let mut buf = [0u8; 64 * 1024];
    let mut copied = 0u64;
    while copied <= budget {
        let want = buf.len().min((budget + 1 - copied) as usize);
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(Copy::Write)?;
        copied += n as u64;
    }
    Ok(copied)
}

pub fn unpack_zip(bytes: &[u8], dest: &Path, limits: PackageLimits) -> Result<()> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| Error::Invalid(format!("the code is not a valid zip archive: {e}")))?;
    if archive.len() > limits.max_entries {
        return Err(Error::TooLarge(format!(
            "archive has {} entries, more than the limit of {}",
            archive.len(),
            limits.max_entries
        )));
    }
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| Error::Invalid(format!("archive entry {i} is unreadable: {e}")))?;
        let name = entry.name().to_string();
        let rel = safe_relative(&name)?;
        if entry.is_symlink() {
            return Err(Error::Invalid(format!(
                "archive entry {name:?} is a symbolic link; links are not allowed"
            )));
        }
        let target = dest.join(&rel);
        refuse_clash(dest, &rel, &name, entry.is_dir())?;
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(io)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        // Stream the entry to its file, counting real bytes rather than trusting the
        // declared size (a zip bomb lies about it); memory stays one buffer.
        let budget = limits.max_unpacked.saturating_sub(total);
        let mut file = std::fs::File::create(&target).map_err(io)?;
        let written = copy_bounded(&mut entry, &mut file, budget).map_err(|e| match e {
            Copy::Read(e) => Error::Invalid(format!("archive entry {name:?} is corrupt: {e}")),
            Copy::Write(e) => io(e),
        })?;
        total += written;
        if total > limits.max_unpacked {
            return Err(Error::TooLarge(format!(
                "archive unpacks to more than the limit of {} bytes",
                limits.max_unpacked
            )));
        }
        if entry.unix_mode().is_some_and(|m| m & 0o111 != 0) {
            set_executable(&target)?;
        }
    }
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            for (name, data) in entries {
                w.start_file(*name, zip::write::SimpleFileOptions::default())
                    .unwrap();
                w.write_all(data).unwrap();
            }
            w.finish().unwrap();
        }
        buf.into_inner()
    }

    /// Entries nested past the limit, or named longer than a file system
    /// takes, are the archive's fault (400), not the server's (500).
    #[test]
    fn archive_entries_too_deep_or_too_long_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackageStore::open(dir.path().to_path_buf(), PackageLimits::default()).unwrap();
        let deep = format!("{}f.py", "d/".repeat(2000));
        let err = store
            .put("deep.zip", &zip_of(&[(&deep, b"x")]))
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert!(
            err.to_string().contains("deeper than the limit of 64"),
            "{err}"
        );
        let long = format!("{}.py", "n".repeat(300));
        let err = store
            .put("long.zip", &zip_of(&[(&long, b"x")]))
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert!(
            err.to_string()
                .contains("longer than the file system takes"),
            "{err}"
        );
        let ok = format!("{}f.py", "d/".repeat(MAX_DEPTH - 1));
        store.put("ok.zip", &zip_of(&[(&ok, b"x")])).unwrap();
    }

    #[test]
    fn file_and_archive_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackageStore::open(dir.path().to_path_buf(), PackageLimits::default()).unwrap();
        let f = store.put("hello.py", b"def main(): return 'hi'").unwrap();
        assert_eq!(f.kind, PackageKind::File);
        assert_eq!(
            std::fs::read(store.path(&f).unwrap()).unwrap(),
            b"def main(): return 'hi'"
        );
        let z = store
            .put("code.zip", &zip_of(&[("pkg/a.py", b"A"), ("b.py", b"B")]))
            .unwrap();
        assert_eq!(z.kind, PackageKind::Archive);
        let root = store.path(&z).unwrap();
        assert_eq!(std::fs::read(root.join("pkg/a.py")).unwrap(), b"A");
        assert_eq!(std::fs::read(root.join("b.py")).unwrap(), b"B");
    }

    /// Sets a package's time back past the grace, as if stored long ago.
    fn age(store: &PackageStore, sha: &str) {
        let dir = std::fs::File::open(store.root.join(sha)).unwrap();
        dir.set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
    }

    #[test]
    fn prune_removes_only_old_packages_nothing_uses() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackageStore::open(dir.path().to_path_buf(), PackageLimits::default()).unwrap();
        let grace = Duration::from_secs(3600);
        let unused = store.put("a.py", b"A").unwrap();
        let used = store
            .put("code.zip", &zip_of(&[("b.py", b"B" as &[u8])]))
            .unwrap();
        let young = store.put("c.py", b"C").unwrap();
        age(&store, &unused.sha256);
        age(&store, &used.sha256);
        // What crashes leave: an upload's work long ago, a prune's half done.
        let stale = dir.path().join(".tmp-abc-1-0");
        std::fs::create_dir(&stale).unwrap();
        std::fs::File::open(&stale)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        let working = dir.path().join(".tmp-def-1-1");
        std::fs::create_dir(&working).unwrap();
        let half = dir.path().join(format!("{PRUNING}x-1-0"));
        std::fs::create_dir(&half).unwrap();

        let keep: HashSet<String> = [used.sha256.clone()].into();
        let pruned = store.prune(&keep, grace).unwrap();
        assert_eq!(pruned.removed, vec![unused.sha256.clone()]);
        assert_eq!(pruned.bytes, 1);
        assert_eq!(pruned.kept, 2);
        assert!(store.path(&unused).is_err());
        assert!(store.path(&used).is_ok() && store.path(&young).is_ok());
        assert!(!stale.exists() && !half.exists());
        assert!(working.exists(), "an upload at work now is left alone");
        // Claimed after it went: refused, as code never uploaded.
        assert!(matches!(store.claim(&unused), Err(Error::NotFound { .. })));
    }

    #[test]
    fn a_claim_or_an_upload_again_keeps_an_old_package() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackageStore::open(dir.path().to_path_buf(), PackageLimits::default()).unwrap();
        let grace = Duration::from_secs(3600);
        let claimed = store.put("a.py", b"A").unwrap();
        let zip = zip_of(&[("b.py", b"B" as &[u8])]);
        let again = store.put("code.zip", &zip).unwrap();
        let file_again = store.put("c.py", b"C").unwrap();
        for p in [&claimed, &again, &file_again] {
            age(&store, &p.sha256);
        }
        store.claim(&claimed).unwrap();
        store.put("code.zip", &zip).unwrap();
        store.put("c.py", b"C").unwrap();
        let pruned = store.prune(&HashSet::new(), grace).unwrap();
        assert!(pruned.removed.is_empty(), "{pruned:?}");
        assert_eq!(pruned.kept, 3);
    }

    #[test]
    fn a_build_output_is_stored_by_its_content_without_links() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackageStore::open(dir.path().join("p"), PackageLimits::default()).unwrap();
        let make = |name: &str| {
            let out = dir.path().join(name);
            std::fs::create_dir_all(out.join("lib/dep")).unwrap();
            std::fs::write(out.join("main.py"), b"import dep").unwrap();
            std::fs::write(out.join("lib/dep/__init__.py"), b"X = 1").unwrap();
            std::os::unix::fs::symlink("/etc/passwd", out.join("lib/leak")).unwrap();
            out
        };
        let (a, links) = store.put_dir(&make("a")).unwrap();
        assert_eq!(links, 1);
        assert_eq!(a.kind, PackageKind::Archive);
        let root = store.path(&a).unwrap();
        assert_eq!(
            std::fs::read(root.join("lib/dep/__init__.py")).unwrap(),
            b"X = 1"
        );
        assert!(std::fs::symlink_metadata(root.join("lib/leak")).is_err());
        assert!(
            !dir.path().join("a").exists(),
            "the output moved into the store"
        );
        // The same output is the same package; another is another.
        let (b, _) = store.put_dir(&make("b")).unwrap();
        assert_eq!(a, b);
        let c = make("c");
        std::fs::write(c.join("main.py"), b"import other").unwrap();
        assert_ne!(store.put_dir(&c).unwrap().0, a);
        // Held to the limits of an upload.
        let small = PackageStore::open(
            dir.path().join("q"),
            PackageLimits {
                max_upload: 1 << 20,
                max_unpacked: 4,
                max_entries: 100,
            },
        )
        .unwrap();
        let err = small.put_dir(&make("d")).unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
    }

    /// A build's output that is a link to a directory elsewhere is refused,
    /// and that directory left as it was: its links, its files' owners, no
    /// file added, still where it was.
    #[test]
    fn a_build_output_that_links_elsewhere_is_refused_and_left_alone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = PackageStore::open(dir.path().join("p"), PackageLimits::default()).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("secret.txt"), b"host").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", outside.join("sub/link")).unwrap();
        let made = dir.path().join("pkg");
        std::os::unix::fs::symlink(&outside, &made).unwrap();
        let owner = std::fs::metadata(outside.join("secret.txt")).unwrap().uid();

        let err = store.put_dir(&made).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert!(
            err.to_string().contains("not a directory but a link"),
            "{err}"
        );
        assert!(std::fs::symlink_metadata(outside.join("sub/link")).is_ok());
        assert!(!outside.join(COMPLETE).exists());
        assert_eq!(
            std::fs::metadata(outside.join("secret.txt")).unwrap().uid(),
            owner
        );
        assert_eq!(std::fs::read(outside.join("secret.txt")).unwrap(), b"host");
        assert!(std::fs::read_dir(dir.path().join("p"))
            .unwrap()
            .filter_map(|e| e.ok())
            .all(|e| e.file_name().to_string_lossy().starts_with('.')));
    }

    /// A build's output nested past the limit, or with more entries than an
    /// upload may hold, is refused without walking all of it.
    #[test]
    fn a_build_output_too_deep_or_too_many_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackageStore::open(dir.path().join("p"), PackageLimits::default()).unwrap();
        let deep = dir.path().join("deep");
        std::fs::create_dir_all(deep.join(["d"; MAX_DEPTH + 1].join("/"))).unwrap();
        let err = store.put_dir(&deep).unwrap_err().to_string();
        assert!(
            err.contains("nests directories deeper than the limit of 64"),
            "{err}"
        );
        let shallow = dir.path().join("shallow");
        std::fs::create_dir_all(shallow.join(["d"; MAX_DEPTH].join("/"))).unwrap();
        store.put_dir(&shallow).unwrap();
        let many = dir.path().join("many");
        std::fs::create_dir_all(&many).unwrap();
        for i in 0..11 {
            std::fs::write(many.join(format!("f{i}")), b"x").unwrap();
        }
        let few = PackageStore::open(
            dir.path().join("q"),
            PackageLimits {
                max_entries: 10,
                ..PackageLimits::default()
            },
        )
        .unwrap();
        let err = few.put_dir(&many).unwrap_err().to_string();
        assert!(err.contains("more than the limit of 10 files"), "{err}");
    }

    #[test]
    fn concurrent_uploads_of_the_same_archive_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            PackageStore::open(dir.path().to_path_buf(), PackageLimits::default()).unwrap(),
        );
        let files: Vec<(String, Vec<u8>)> = (0..50)
            .map(|i| (format!("f{i}.py"), vec![b'x'; 2000]))
            .collect();
        let entries: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let bytes = zip_of(&entries);
        let uploads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                let bytes = bytes.clone();
                std::thread::spawn(move || store.put("code.zip", &bytes))
            })
            .collect();
        for u in uploads {
            let package = u.join().unwrap().unwrap();
            let root = store.path(&package).unwrap();
            assert_eq!(std::fs::read_dir(&root).unwrap().count(), 51); // + .complete
        }
    }

    #[test]
    fn escapes_and_bombs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let limits = PackageLimits {
            max_upload: 1 << 20,
            max_unpacked: 1000,
            max_entries: 10,
        };
        let store = PackageStore::open(dir.path().join("p"), limits).unwrap();
        for bad in ["../evil.py", "/etc/evil", "a/../../evil"] {
            let err = store.put("x.zip", &zip_of(&[(bad, b"x")])).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{bad}: {err}");
        }
        assert!(!dir.path().join("evil.py").exists());
        let big = vec![0u8; 5000];
        let err = store.put("x.zip", &zip_of(&[("big", &big)])).unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
        let err = store.put("x.zip", b"PK\x03\x04garbage").unwrap_err();
        // Named as a zip, not one; an archive with nothing in it.
        let named = store.put("fake.zip", b"print(1)\n").unwrap_err();
        assert!(
            named
                .to_string()
                .contains("is named as a zip archive but is not one"),
            "{named}"
        );
        let empty = zip_of(&[]);
        let none = store.put("archive.zip", &empty).unwrap_err();
        assert!(none.to_string().contains("holds no files"), "{none}");
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert!(store.put("../x", b"code").is_err());
    }

    #[test]
    fn a_file_and_a_directory_at_one_path_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackageStore::open(dir.path().join("p"), PackageLimits::default()).unwrap();
        for entries in [
            &[("a", &b"file"[..]), ("a/b", &b"inner"[..])][..],
            &[("a/b", &b"inner"[..]), ("a", &b"file"[..])][..],
            &[("a/b/c", &b"inner"[..]), ("a/b", &b"file"[..])][..],
        ] {
            let err = store.put("x.zip", &zip_of(entries)).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{entries:?}: {err}");
            assert!(
                err.to_string().contains("both a file and a directory"),
                "{err}"
            );
        }
        // Nothing half-unpacked is left behind.
        assert_eq!(std::fs::read_dir(dir.path().join("p")).unwrap().count(), 0);
    }

    #[test]
    fn a_zip_bomb_is_refused_by_the_bytes_it_really_unpacks_to() {
        let dir = tempfile::tempdir().unwrap();
        let limits = PackageLimits {
            max_upload: 1 << 20,
            max_unpacked: 1 << 20,
            max_entries: 10,
        };
        let store = PackageStore::open(dir.path().join("p"), limits).unwrap();
        let zeros = vec![0u8; 16 << 20];
        let bomb = zip_of(&[("small.txt", b"ok"), ("bomb", &zeros)]);
        assert!(bomb.len() < 64 << 10, "deflate made {} bytes", bomb.len());
        drop(zeros);
        let err = store.put("bomb.zip", &bomb).unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
        assert_eq!(std::fs::read_dir(dir.path().join("p")).unwrap().count(), 0);
    }

    /// What bounds an unpack's memory: entries go to disk through one fixed
    /// buffer, however much an entry inflates to.
    #[test]
    fn copying_an_entry_holds_one_buffer_and_stops_past_the_budget() {
        struct Chunks {
            largest: usize,
            total: u64,
        }
        impl std::io::Write for Chunks {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.largest = self.largest.max(b.len());
                self.total += b.len() as u64;
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut gib = std::io::repeat(7).take(1 << 30);
        let mut out = Chunks {
            largest: 0,
            total: 0,
        };
        let budget = 8 << 20;
        let copied = copy_bounded(&mut gib, &mut out, budget).ok().unwrap();
        assert_eq!((copied, out.total), (budget + 1, budget + 1));
        assert!(out.largest <= 64 << 10, "{}", out.largest);
        // A short entry is copied whole.
        let mut out = Chunks {
            largest: 0,
            total: 0,
        };
        let copied = copy_bounded(&mut &b"hello"[..], &mut out, budget)
            .ok()
            .unwrap();
        assert_eq!(copied, 5);
    }

    proptest! {
        #[test]
        fn unpacked_paths_stay_inside(names in proptest::collection::btree_set("[a-z./]{1,12}", 1..5)) {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("out");
            std::fs::create_dir_all(&dest).unwrap();
            let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
            let _ = unpack_zip(&zip_of(&entries), &dest, PackageLimits::default());
            // Nothing may appear beside `out`.
            let siblings: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            prop_assert_eq!(siblings.len(), 1);
        }
    }
}
