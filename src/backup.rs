//! Backups of a running server (`GET /v1/backup`, `fusion backup`) and their
//! restore into a new data directory (`fusion restore`).
//!
//! A backup is a tar archive:
//! - `fusion-backup.json`: the format, the server's version, when it was made,
//!   and what `db.records` holds;
//! - `db.records`: the database (`engine::backup`): every tree as read, then
//!   the engine's writes made while it was read, so runs restore as they
//!   stood when the reading ended;
//! - the files the database needs: `packages/` (functions' code) and
//!   `secrets.key` (what secrets are sealed with) from the data directory, and
//!   `token` (the API token, from wherever `--token-file` keeps it).
//!
//! Not in it: logs, caches (`images/`, `runtimes/`, `containers/`) and what
//! lives only while the server runs (instances, builds).

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What a backup's archive says of itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// This layout's version: a restore refuses others.
    pub format: u32,
    pub fusion_version: String,
    /// When the database was read (RFC 3339, UTC).
    pub created_at: String,
    /// Records in `db.records`, and of those the writes made while it was read.
    pub records: u64,
    pub records_during: u64,
}

const FORMAT: u32 = 1;
pub(crate) const MANIFEST: &str = "fusion-backup.json";
pub(crate) const RECORDS: &str = "db.records";
/// The last entry: what came before it. A backup cut short at an entry's
/// boundary (which a tar reader takes for its end) lacks it.
pub(crate) const END: &str = "fusion-backup.end";
/// The data directory's files and folders a backup holds.
const FILES: [&str; 3] = ["packages", "secrets.key", "token"];

/// Set while a backup is made: one at a time (the store keeps one copy of
/// the writes made meanwhile).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// The right to make a backup now, given back when dropped.
pub struct Turn(());

impl Turn {
    /// `None` while another backup is made.
    pub fn take() -> Option<Turn> {
        RUNNING
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            // Made only when taken: a `Turn` made and dropped when refused
            // would give back the turn of the backup being made.
            .then(|| Turn(()))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}

/// A backup's database part, read and waiting in a temporary file in the
/// data directory to be sent (`send`).
pub struct Prepared {
    records: tempfile::NamedTempFile,
    pub manifest: Manifest,
    /// Held until the backup is sent or given up.
    _turn: Turn,
}

/// Why a backup could not be made: said to the client before any byte of it.
#[derive(Debug, thiserror::Error)]
pub enum NotMade {
    /// Not enough room in the data directory for the database part.
    #[error("{0}")]
    NoRoom(String),
    /// The store changed too much while it was read (it may work later).
    #[error("{0}")]
    Busy(String),
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// Room a backup leaves free beside its temporary file: the store's journal
/// allocates 16 MiB segments, and a store refused room stops the server.
const ROOM_LEFT: u64 = 256 << 20;

/// Reads the database of the server whose engine is `engine` into a
/// temporary file in its data directory `data_dir` (a tar entry says its size
/// before its bytes, so it is read before the archive starts). Refused when
/// the data directory's disk lacks room for about the store's size.
/// Blocking.
/// `turn` is held until the backup is sent or given up; `cancelled` says the
/// client went away (the read then stops).
pub fn prepare(
    engine: &engine::Engine,
    data_dir: &Path,
    turn: Turn,
    cancelled: &AtomicBool,
) -> Result<Prepared, NotMade> {
    let need = engine.store().database().size_on_disk().unwrap_or(0);
    let free = || pool_manager::sys::free_bytes(data_dir).unwrap_or(u64::MAX);
    if free() < need.saturating_add(ROOM_LEFT) {
        return Err(NotMade::NoRoom(format!(
            "a backup needs about {} MiB free in the data directory (the store's size, {} MiB, written there before it is sent, and {} MiB left over); it has {} MiB",
            need.saturating_add(ROOM_LEFT).div_ceil(1 << 20),
            need.div_ceil(1 << 20),
            ROOM_LEFT >> 20,
            free() >> 20
        )));
    }
    // Other writes go on meanwhile: the read stops before they run short.
    let short = AtomicBool::new(false);
    let stop = || {
        if free() < ROOM_LEFT / 2 {
            short.store(true, Ordering::SeqCst);
        }
        cancelled.load(Ordering::SeqCst) || short.load(Ordering::SeqCst)
    };
    let mut records = tempfile::Builder::new()
        .prefix(".backup-")
        .tempfile_in(data_dir)
        .context("cannot make the backup's temporary file in the data directory")
        .map_err(NotMade::Failed)?;
    let counts = engine
        .store()
        .export(std::io::BufWriter::new(records.as_file_mut()), stop)
        .map_err(|e| match e {
            engine::store::StoreError::Busy(m) => NotMade::Busy(m),
            engine::store::StoreError::Stopped if short.load(Ordering::SeqCst) => {
                NotMade::NoRoom(format!(
                    "the data directory's disk ran short of room ({} MiB left) while the backup was read: it was given up",
                    free() >> 20
                ))
            }
            engine::store::StoreError::Stopped => {
                NotMade::Failed(anyhow::anyhow!("the backup was given up: its client went away"))
            }
            e => NotMade::Failed(anyhow::Error::new(e).context("cannot read the database")),
        })?;
    let created_at = jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .map_err(|e| NotMade::Failed(e.into()))?
        .to_string();
    Ok(Prepared {
        records,
        _turn: turn,
        manifest: Manifest {
            format: FORMAT,
            fusion_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at,
            records: counts.records,
            records_during: counts.during,
        },
    })
}

/// Writes the backup `prepared` read to `out` as a tar archive, with the
/// data directory's files: `packages/`, `secrets.key`, and the API token
/// (from `token_file`, wherever `--token-file` put it). Blocking.
pub fn send(
    mut prepared: Prepared,
    data_dir: &Path,
    token_file: &Path,
    out: impl Write,
) -> Result<Manifest> {
    let mut tar = tar::Builder::new(out);
    let json = serde_json::to_vec_pretty(&prepared.manifest)?;
    append_bytes(&mut tar, MANIFEST, &json)?;
    let file = prepared.records.as_file_mut();
    let len = file.metadata()?.len();
    let mut header = regular_header(len);
    tar.append_data(
        &mut header,
        RECORDS,
        std::io::Seek::rewind(file).map(|()| file)?,
    )?;
    // Each where it is, followed if it is a link (a volume of its own).
    let tops = [
        ("packages", data_dir.join("packages")),
        ("secrets.key", data_dir.join("secrets.key")),
        ("token", token_file.to_path_buf()),
    ];
    let mut files = 0u64;
    for (name, path) in tops {
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => files += append_tree(&mut tar, name, &path)?,
            Ok(m) if m.is_file() => {
                let mut f = std::fs::File::open(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                tar.append_file(name, &mut f)?;
                files += 1;
            }
            Ok(_) => bail!("{} is neither a file nor a directory", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        }
    }
    let end = serde_json::to_vec(&serde_json::json!({"files": files}))?;
    append_bytes(&mut tar, END, &end)?;
    tar.into_inner()?.flush()?;
    Ok(prepared.manifest)
}

/// Removes the temporary files of backups a killed server was making (the
/// server that makes one removes it when done).
pub fn remove_leftovers(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".backup-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn regular_header(len: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(len);
    header.set_mode(0o600);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn append_bytes(tar: &mut tar::Builder<impl Write>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut header = regular_header(bytes.len() as u64);
    tar.append_data(&mut header, name, bytes)?;
    Ok(())
}

/// Appends the tree under `top` as `name`: its directories and regular
/// files (functions' code has no links: uploads and builds refuse them),
/// leaving out what is being written (`.tmp-*`) and what goes away while it
/// is read.
fn append_tree(tar: &mut tar::Builder<impl Write>, name: &str, top: &Path) -> Result<u64> {
    let mut files = 0;
    let mut todo = vec![top.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let named = Path::new(name).join(dir.strip_prefix(top).unwrap_or(Path::new("")));
        tar.append_dir(&named, &dir)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("{}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                todo.push(path);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let named = Path::new(name).join(path.strip_prefix(top).unwrap_or(&path));
            match tar.append_path_with_name(&path, named) {
                Ok(()) => files += 1,
                // A package deleted while the backup ran.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
            }
        }
    }
    Ok(files)
}

/// What a restore or a check found in a backup.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    pub records: u64,
    pub files: u64,
}

/// Reads a backup through, applying nothing: whether it is whole.
pub fn check(input: impl Read) -> Result<Restored> {
    read(input, None)
}

/// What a newly made filesystem holds at its root: a directory that holds
/// only this is empty (a fresh volume may be the data directory itself).
const LOST_FOUND: &str = "lost+found";

/// Restores the backup read from `input` into the data directory `dir`, which
/// must not exist or be empty (but for a new filesystem's `lost+found`). On
/// an error, what was made in `dir` is removed.
pub fn restore(input: impl Read, dir: &Path) -> Result<Restored> {
    let existed = match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut entries = entries.flatten().filter(|e| {
                e.file_name() != LOST_FOUND || !e.file_type().is_ok_and(|t| t.is_dir())
            });
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: restore into a new directory (a server's data directory is never overwritten)",
                    dir.display()
                );
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("{}", dir.display())),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    // Private, as the server keeps it: it is about to hold the token.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let restored = read(input, Some(dir));
    if restored.is_err() {
        if existed {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_name() != LOST_FOUND {
                    let _ = pool_manager::sys::remove_tree(&e.path());
                }
            }
        } else {
            let _ = pool_manager::sys::remove_tree(dir);
        }
    }
    restored
}

fn read(input: impl Read, dir: Option<&Path>) -> Result<Restored> {
    let mut archive = tar::Archive::new(input);
    let mut entries = archive
        .entries()
        .context("the file is not a Fusion backup (not a tar archive)")?;
    let not_a_backup = || anyhow::anyhow!("the file is not a Fusion backup (no {MANIFEST} first)");
    let mut first = entries
        .next()
        .ok_or_else(not_a_backup)?
        .map_err(|e| anyhow::anyhow!("the file is not a Fusion backup ({e})"))?;
    if first.path()?.as_ref() != Path::new(MANIFEST) {
        return Err(not_a_backup());
    }
    let mut json = Vec::new();
    (&mut first).take(1 << 20).read_to_end(&mut json)?;
    let manifest: Manifest = serde_json::from_slice(&json)
        .with_context(|| format!("the backup's {MANIFEST} cannot be read"))?;
    if manifest.format != FORMAT {
        bail!(
            "the backup is of format {} (made by fusion {}); this fusion reads format {FORMAT}",
            manifest.format,
            manifest.fusion_version
        );
    }
    let mut records = None;
    let mut files = 0;
    let mut dirs = Vec::new();
    let mut ended = false;
    for entry in entries {
        let mut entry = entry.context("the backup is cut short or damaged")?;
        let path = entry.path()?.into_owned();
        if ended {
            bail!("the backup holds {} after its end", path.display());
        }
        if path == Path::new(END) {
            let mut json = Vec::new();
            (&mut entry).take(1 << 20).read_to_end(&mut json)?;
            let said = serde_json::from_slice::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| v["files"].as_u64());
            if said != Some(files) {
                bail!(
                    "the backup's end counts {} files where {files} came before it",
                    said.map_or("no".to_string(), |n| n.to_string())
                );
            }
            ended = true;
            continue;
        }
        if path == Path::new(RECORDS) {
            let n = match dir {
                Some(dir) => {
                    let db = sled::Config::new()
                        .path(dir.join("db"))
                        .open()
                        .context("cannot make the database")?;
                    engine::backup::restore(&db, &mut entry)?
                }
                None => engine::backup::check(&mut entry)?,
            };
            if n != manifest.records {
                bail!(
                    "the backup's database part holds {n} records where its {MANIFEST} says {}",
                    manifest.records
                );
            }
            records = Some(n);
            continue;
        }
        // The check packages' archives get: no `..`, no absolute path.
        let path = pool_manager::delivery::safe_relative(&path).map_err(|_| {
            anyhow::anyhow!("the backup names {} outside its directory", path.display())
        })?;
        let top = match path.components().next() {
            Some(Component::Normal(c)) => c.to_string_lossy().into_owned(),
            _ => String::new(),
        };
        if !FILES.contains(&top.as_str()) {
            bail!(
                "the backup holds {} where no backup has anything: it was not made by fusion",
                path.display()
            );
        }
        let kind = entry.header().entry_type();
        if !kind.is_file() && !kind.is_dir() {
            bail!(
                "the backup holds {} as a link or a special file, where a backup has files and directories only",
                path.display()
            );
        }
        if let Some(dir) = dir {
            let target = dir.join(&path);
            if kind.is_dir() {
                // Its mode once everything in it is written (it may be read-only).
                std::fs::create_dir_all(&target)
                    .with_context(|| format!("cannot make {}", target.display()))?;
                dirs.push((target, entry.header().mode().unwrap_or(0o700) & 0o777));
                continue;
            }
            // Inside `dir` only (no `..`, no absolute path, no link out).
            if !entry
                .unpack_in(dir)
                .with_context(|| format!("cannot restore {}", path.display()))?
            {
                bail!("the backup names {} outside its directory", path.display());
            }
        } else {
            std::io::copy(&mut entry, &mut std::io::sink())?;
        }
        if kind.is_file() {
            files += 1;
        }
    }
    let Some(records) = records else {
        bail!("the backup is cut short: it has no {RECORDS}");
    };
    if !ended {
        bail!("the backup is cut short: it has no {END}");
    }
    // Deepest first, so that a read-only directory takes its mode last.
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, mode) in dirs {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    }
    Ok(Restored {
        manifest,
        records,
        files,
    })
}

/// A path given on the command line, made absolute for messages.
pub fn shown(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar of the given entries, as a hostile or damaged backup would be.
    pub(crate) fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in entries {
            let mut header = regular_header(bytes.len() as u64);
            // Raw, so that names tar's own checks refuse (`..`) can be made.
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            tar.append(&header, *bytes).unwrap();
        }
        tar.into_inner().unwrap()
    }

    pub(crate) fn manifest(records: u64) -> Vec<u8> {
        serde_json::to_vec(&Manifest {
            format: FORMAT,
            fusion_version: "test".into(),
            created_at: "2026-12-03T00:00:00Z".into(),
            records,
            records_during: 0,
        })
        .unwrap()
    }

    pub(crate) fn records() -> Vec<u8> {
        let mut w = engine::backup::Writer::new(Vec::new()).unwrap();
        w.insert(b"t", b"k", b"v").unwrap();
        w.finish().unwrap().0
    }

    #[test]
    fn a_restore_writes_the_database_and_files_into_a_new_directory_only() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        let tar = tar_of(&[
            (MANIFEST, &manifest(1)),
            (RECORDS, &records()),
            ("secrets.key", b"key"),
            ("packages/abc/hello.py", b"print(1)"),
            (END, br#"{"files": 2}"#),
        ]);
        assert_eq!(check(&tar[..]).unwrap().files, 2);
        let r = restore(&tar[..], &dir).unwrap();
        assert_eq!((r.records, r.files), (1, 2));
        assert_eq!(std::fs::read(dir.join("secrets.key")).unwrap(), b"key");
        assert_eq!(
            std::fs::read(dir.join("packages/abc/hello.py")).unwrap(),
            b"print(1)"
        );
        // sled lets go of its lock a moment after the restore's handle is dropped.
        let config = sled::Config::new().path(dir.join("db"));
        let db =
            pool_manager::store::open_waiting(&config, std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(
            db.open_tree("t")
                .unwrap()
                .get("k")
                .unwrap()
                .unwrap()
                .as_ref(),
            b"v"
        );
        drop(db);
        // The same again, into the directory now holding it: refused.
        let e = restore(&tar[..], &dir).unwrap_err().to_string();
        assert!(e.contains("is not empty"), "{e}");
        assert_eq!(std::fs::read(dir.join("secrets.key")).unwrap(), b"key");
    }

    /// A fresh filesystem's root (only `lost+found`) takes a restore; what a
    /// failed one made there is removed, and the directory and its
    /// `lost+found` are left.
    #[test]
    fn a_new_volumes_root_with_only_lost_found_takes_a_restore() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        std::fs::create_dir_all(dir.join(LOST_FOUND)).unwrap();
        let whole = tar_of(&[
            (MANIFEST, &manifest(1)),
            (RECORDS, &records()),
            ("secrets.key", b"key"),
            ("packages/abc/hello.py", b"print(1)"),
            (END, br#"{"files": 2}"#),
        ]);
        // Cut before its end: refused once the files were written.
        let cut = &whole[..whole.len() - 2048];
        assert!(restore(cut, &dir).is_err());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(LOST_FOUND)]);
        let r = restore(&whole[..], &dir).unwrap();
        assert_eq!((r.records, r.files), (1, 2));
        assert!(dir.join(LOST_FOUND).is_dir());
        assert_eq!(std::fs::read(dir.join("secrets.key")).unwrap(), b"key");
        // A file of that name is not a filesystem's: the directory is not empty.
        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(LOST_FOUND), b"x").unwrap();
        let e = restore(&whole[..], &other).unwrap_err().to_string();
        assert!(e.contains("is not empty"), "{e}");
    }

    #[test]
    fn one_backup_at_a_time() {
        let first = Turn::take().expect("no backup is being made");
        assert!(Turn::take().is_none());
        // A refusal leaves the turn with the backup being made.
        assert!(Turn::take().is_none());
        drop(first);
        assert!(Turn::take().is_some());
    }

    #[test]
    fn a_backup_that_is_not_whole_or_not_fusions_restores_nothing() {
        let base = tempfile::tempdir().unwrap();
        let whole = records();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not a tar at all".to_vec(), "not a Fusion backup"),
            (tar_of(&[("other.txt", b"x")]), "not a Fusion backup"),
            (tar_of(&[(MANIFEST, &manifest(1))]), "has no db.records"),
            (
                tar_of(&[
                    (MANIFEST, &manifest(1)),
                    (RECORDS, &whole[..whole.len() - 3]),
                ]),
                "cut short",
            ),
            (
                tar_of(&[(MANIFEST, &manifest(2)), (RECORDS, &whole)]),
                "holds 1 records where",
            ),
            // Cut at an entry's boundary, which tar takes for the end.
            (
                tar_of(&[
                    (MANIFEST, &manifest(1)),
                    (RECORDS, &whole),
                    ("packages/abc/hello.py", b"print(1)"),
                ]),
                "has no fusion-backup.end",
            ),
            (
                tar_of(&[
                    (MANIFEST, &manifest(1)),
                    (RECORDS, &whole),
                    ("packages/abc/hello.py", b"print(1)"),
                    (END, br#"{"files": 2}"#),
                ]),
                "counts 2 files where 1",
            ),
            (
                tar_of(&[
                    (MANIFEST, &manifest(1)),
                    (RECORDS, &whole),
                    (END, br#"{"files": 0}"#),
                    ("secrets.key", b"key"),
                ]),
                "after its end",
            ),
            (
                tar_of(&[
                    (MANIFEST, &manifest(1)),
                    (RECORDS, &whole),
                    ("../escape", b"x"),
                ]),
                "outside its directory",
            ),
            (
                tar_of(&[
                    (MANIFEST, &manifest(1)),
                    (RECORDS, &whole),
                    ("logs/other", b"x"),
                ]),
                "no backup has anything",
            ),
            (
                {
                    // A link that would send the server to another file.
                    let mut tar = tar::Builder::new(Vec::new());
                    for (name, bytes) in [(MANIFEST, manifest(1)), (RECORDS, whole.clone())] {
                        let mut h = regular_header(bytes.len() as u64);
                        tar.append_data(&mut h, name, &bytes[..]).unwrap();
                    }
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    tar.append_link(&mut h, "secrets.key", "/etc/shadow")
                        .unwrap();
                    tar.into_inner().unwrap()
                },
                "as a link",
            ),
            (
                tar_of(&[
                    (MANIFEST, &manifest(1)),
                    (RECORDS, &whole),
                    ("packages/../../escape", b"x"),
                ]),
                "outside its directory",
            ),
        ];
        for (i, (tar, says)) in cases.iter().enumerate() {
            let dir = base.path().join(format!("data-{i}"));
            let e = format!("{:#}", restore(&tar[..], &dir).unwrap_err());
            assert!(e.contains(says), "case {i}: {e}");
            assert!(!dir.exists(), "case {i}: {} left behind", dir.display());
            assert!(check(&tar[..]).is_err(), "case {i}");
        }
        assert!(!base.path().join("escape").exists());
    }
}
