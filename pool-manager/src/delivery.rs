//! Code delivery to instances that run elsewhere (pods), whose fetcher pulls the
//! package from the API: the per-instance credentials (Fusion keeps only their
//! sha256), each allowed to fetch exactly the package being staged on it; the
//! package as the fetcher gets it (a file as is, a directory as a tar stream);
//! and the fetcher's side, which writes under its directory and refuses any
//! path that would leave it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::backend::StagedFile;
use crate::error::{Error, Result};
use crate::package::{hex, PackageLimits};
use crate::resources::PackageRef;

/// Where the fetcher gets a package: `GET {POD_PACKAGES_PATH}/{sha256}` with
/// `Authorization: Bearer <the instance's credential>`. Outside the admin token.
pub const POD_PACKAGES_PATH: &str = "/v1/pod-packages/";

/// The media type of a directory package sent as a tar stream.
pub const TAR_MEDIA_TYPE: &str = "application/x-tar";

/// The credentials of live instances, by their sha256: which instance each is,
/// and the package it may fetch right now (none between stagings).
#[derive(Default)]
pub struct Credentials {
    grants: Mutex<HashMap<String, Grant>>,
}

struct Grant {
    instance: String,
    package: Option<PackageRef>,
    /// The secrets' and configmaps' files staged with the package.
    files: Arc<Vec<StagedFile>>,
}

/// Why a fetch is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchDenied {
    #[error("fetching a package needs `Authorization: Bearer <the instance's credential>`")]
    Missing,
    #[error("the credential is not one of this server's instances")]
    Unknown,
    #[error("instance {instance} may not fetch package {package}")]
    NotAllowed { instance: String, package: String },
}

impl FetchDenied {
    /// 401 for no or an unknown credential, 403 for a known one asking for
    /// another package.
    pub fn status(&self) -> http::StatusCode {
        match self {
            FetchDenied::Missing | FetchDenied::Unknown => http::StatusCode::UNAUTHORIZED,
            FetchDenied::NotAllowed { .. } => http::StatusCode::FORBIDDEN,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            FetchDenied::Missing | FetchDenied::Unknown => "unauthorized",
            FetchDenied::NotAllowed { .. } => "forbidden",
        }
    }
}

/// The sha256 of a credential, as Fusion keeps it (hex).
pub fn credential_digest(credential: &str) -> String {
    hex(&Sha256::digest(credential.as_bytes()))
}

/// A new random credential (256 bits, hex) and its digest.
pub fn mint_credential() -> Result<(String, String)> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Internal("no randomness for a credential".into()))?;
    let credential = hex(&bytes);
    let digest = credential_digest(&credential);
    Ok((credential, digest))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Credentials {
    /// Knows the credential with this digest as `instance`'s, allowed nothing yet.
    pub fn register(&self, digest: &str, instance: &str) {
        lock(&self.grants).insert(
            digest.to_string(),
            Grant {
                instance: instance.to_string(),
                package: None,
                files: Arc::default(),
            },
        );
    }

    /// Allows the credential to fetch `package` (and no other), with `files`
    /// (its function's secrets and configmaps).
    pub fn allow(&self, digest: &str, package: &PackageRef, files: Vec<StagedFile>) {
        if let Some(g) = lock(&self.grants).get_mut(digest) {
            g.package = Some(package.clone());
            g.files = Arc::new(files);
        }
    }

    /// Takes back what the credential may fetch (the staging is over).
    pub fn revoke(&self, digest: &str) {
        if let Some(g) = lock(&self.grants).get_mut(digest) {
            g.package = None;
            g.files = Arc::default();
        }
    }

    /// The files staged with package `sha256`, if `credential` may fetch it now.
    pub fn check_files(
        &self,
        credential: Option<&str>,
        sha256: &str,
    ) -> std::result::Result<Arc<Vec<StagedFile>>, FetchDenied> {
        self.check(credential, sha256)?;
        let credential = credential.ok_or(FetchDenied::Missing)?;
        let grants = lock(&self.grants);
        let grant = grants
            .get(&credential_digest(credential))
            .ok_or(FetchDenied::Unknown)?;
        Ok(grant.files.clone())
    }

    /// Forgets the credential (its instance ended).
    pub fn forget(&self, digest: &str) {
        lock(&self.grants).remove(digest);
    }

    /// The package `sha256` if `credential` may fetch it now.
    pub fn check(
        &self,
        credential: Option<&str>,
        sha256: &str,
    ) -> std::result::Result<PackageRef, FetchDenied> {
        let credential = credential.ok_or(FetchDenied::Missing)?;
        let grants = lock(&self.grants);
        let grant = grants
            .get(&credential_digest(credential))
            .ok_or(FetchDenied::Unknown)?;
        match &grant.package {
            Some(p) if p.sha256 == sha256 => Ok(p.clone()),
            _ => Err(FetchDenied::NotAllowed {
                instance: grant.instance.clone(),
                package: sha256.to_string(),
            }),
        }
    }
}

/// Whether `s` is a package digest (64 lowercase hex digits): the only names
/// the fetcher writes under and the endpoint answers for.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The directory `dir` as a tar stream: its files and directories, with their
/// modes; links are left out (stored packages hold none). In memory: for
/// tests and small trees; the endpoint streams with [`write_tar_dir`].
pub fn tar_dir(dir: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_tar_dir(dir, &mut out)?;
    Ok(out)
}

/// Writes the directory `dir` as a tar stream into `out`, one file at a time
/// (memory holds the tar crate's copy buffer, not the tree).
pub fn write_tar_dir(dir: &Path, out: impl Write) -> Result<()> {
    let io = |e: std::io::Error| Error::Storage(format!("cannot pack {}: {e}", dir.display()));
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    append_tree(&mut builder, dir, Path::new("")).map_err(io)?;
    builder.into_inner().map_err(io)?.flush().map_err(io)
}

/// Sent with a directory package: the sha256 (hex) of the exact bytes of the
/// tar stream. The package's own digest cannot be checked against the tree:
/// for an uploaded zip it is the zip's sha256, and the zip is not kept (only
/// its unpacked tree), so the fetcher checks the stream against this header,
/// which catches a stream cut short or altered on the way; the digest in the
/// URL is what the pod was allowed (a file package is checked against it).
pub const CONTENT_SHA256_HEADER: &str = "x-fusion-content-sha256";

/// The sha256 and length of bytes written through it (an `io::Write` sink).
#[derive(Default)]
pub struct ContentDigest {
    sha: Sha256,
    len: u64,
}

impl ContentDigest {
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sha256 (hex) and the length.
    pub fn finish(self) -> (String, u64) {
        (hex(&self.sha.finalize()), self.len)
    }
}

impl Write for ContentDigest {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The sha256 (hex) and length of the tar stream of `dir` (a first pass that
/// keeps nothing, so the header can go before the streamed body).
pub fn tar_dir_digest(dir: &Path) -> Result<(String, u64)> {
    let mut digest = ContentDigest::default();
    write_tar_dir(dir, &mut digest)?;
    Ok(digest.finish())
}

/// The most bytes a package may arrive as at the fetcher: a file is at most
/// `max_unpacked`; a tar adds per entry a header, padding and, for a long
/// path, a GNU long-name header and block (up to 6 KiB for a 4 KiB path).
pub fn max_transfer(limits: PackageLimits) -> u64 {
    limits
        .max_unpacked
        .saturating_add((limits.max_entries as u64 + 2).saturating_mul(6 << 10))
}

fn append_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path, rel: &Path) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if rel.as_os_str().is_empty() && e.file_name() == crate::package::COMPLETE {
            continue;
        }
        let kind = e.file_type()?;
        let path = rel.join(e.file_name());
        if kind.is_dir() {
            b.append_dir(&path, e.path())?;
            append_tree(b, root, &path)?;
        } else if kind.is_file() {
            b.append_path_with_name(e.path(), &path)?;
        }
    }
    Ok(())
}

/// Where staged files go (`secrets/<ns>/<name>/<key>`, `configs/...`): the
/// only first components a files tar may have.
pub const FILE_ROOTS: [&str; 2] = ["secrets", "configs"];

/// Secrets' and configmaps' files as a tar stream, each read-only.
pub fn tar_files(files: &[StagedFile]) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| Error::Internal(format!("cannot pack the files: {e}"));
    let mut builder = tar::Builder::new(Vec::new());
    for f in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(f.contents.len() as u64);
        header.set_mode(0o444);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, &f.path, &f.contents[..])
            .map_err(io)?;
    }
    builder.into_inner().map_err(io)
}

/// Unpacks a files tar (see [`tar_files`]) under `root`: as [`unpack_tar`],
/// and every entry must lie under one of [`FILE_ROOTS`]; nothing is written
/// unless all do.
pub fn unpack_files(bytes: &[u8], root: &Path, limits: PackageLimits) -> Result<usize> {
    let io = |e: std::io::Error| Error::Invalid(format!("cannot unpack the files: {e}"));
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path().map_err(io)?.into_owned();
        let rel = safe_relative(&path)?;
        let first = rel.components().next().map(|c| c.as_os_str().to_owned());
        let under_root = first.is_some_and(|f| FILE_ROOTS.iter().any(|r| f == *r));
        if !under_root || rel.components().count() < 2 {
            return Err(Error::Invalid(format!(
                "file {path:?} is not under /secrets or /configs"
            )));
        }
    }
    unpack_tar(bytes, root, limits)
}

/// The fetcher's checks on a path it is asked to write: relative, plain names
/// only (no `..`, no root, nothing empty).
pub fn safe_relative(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "package entry {path:?} would be written outside its directory"
                )))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Error::Invalid(format!(
            "package entry {path:?} has no name"
        )));
    }
    Ok(out)
}

/// Unpacks a tar stream into `dest` (which exists): regular files and
/// directories only, every path checked by [`safe_relative`], within `limits`.
/// Links, devices and paths that escape are refused, and nothing is written
/// for them.
pub fn unpack_tar(reader: impl Read, dest: &Path, limits: PackageLimits) -> Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e: std::io::Error| Error::Invalid(format!("cannot unpack the package: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut count = 0usize;
    let mut total = 0u64;
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        count += 1;
        if count > limits.max_entries {
            return Err(Error::TooLarge(format!(
                "the package has more than {} entries",
                limits.max_entries
            )));
        }
        let path = entry.path().map_err(io)?.into_owned();
        let rel = safe_relative(&path)?;
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(io)?;
            continue;
        }
        if !kind.is_file() {
            return Err(Error::Invalid(format!(
                "package entry {path:?} is not a file or a directory"
            )));
        }
        total += entry.size();
        if total > limits.max_unpacked {
            return Err(Error::TooLarge(format!(
                "the package unpacks to more than {} bytes",
                limits.max_unpacked
            )));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        let mut file = std::fs::File::create(&target).map_err(io)?;
        std::io::copy(&mut entry, &mut file).map_err(io)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode | 0o444))
            .map_err(io)?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::PackageKind;

    fn package(sha: char) -> PackageRef {
        PackageRef {
            sha256: sha.to_string().repeat(64),
            kind: PackageKind::File,
            filename: Some("hello.py".into()),
        }
    }

    #[test]
    fn a_credential_fetches_only_the_package_it_is_allowed_and_only_while_staging() {
        let creds = Credentials::default();
        let (credential, digest) = mint_credential().unwrap();
        assert_ne!(credential, digest, "the credential itself is never kept");
        creds.register(&digest, "pod-a");
        let a = package('a');
        let b = package('b');
        assert_eq!(
            creds.check(Some(&credential), &a.sha256),
            Err(FetchDenied::NotAllowed {
                instance: "pod-a".into(),
                package: a.sha256.clone()
            })
        );
        creds.allow(&digest, &a, Vec::new());
        assert_eq!(creds.check(Some(&credential), &a.sha256), Ok(a.clone()));
        let other = creds.check(Some(&credential), &b.sha256).unwrap_err();
        assert_eq!(other.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(
            creds.check(None, &a.sha256).unwrap_err().status(),
            http::StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            creds.check(Some("guess"), &a.sha256),
            Err(FetchDenied::Unknown)
        );
        creds.revoke(&digest);
        assert!(creds.check(Some(&credential), &a.sha256).is_err());
        creds.allow(&digest, &a, Vec::new());
        creds.forget(&digest);
        assert_eq!(
            creds.check(Some(&credential), &a.sha256),
            Err(FetchDenied::Unknown)
        );
    }

    #[test]
    fn staged_files_go_only_under_secrets_and_configs() {
        let creds = Credentials::default();
        let (credential, digest) = mint_credential().unwrap();
        creds.register(&digest, "pod");
        let file = |p: &str| StagedFile {
            path: p.into(),
            contents: b"s3cret".to_vec(),
        };
        creds.allow(
            &digest,
            &package('a'),
            vec![file("secrets/default/db/password")],
        );
        let files = creds
            .check_files(Some(&credential), &"a".repeat(64))
            .unwrap();
        assert!(creds
            .check_files(Some(&credential), &"b".repeat(64))
            .is_err());
        let root = tempfile::tempdir().unwrap();
        unpack_files(
            &tar_files(&files).unwrap(),
            root.path(),
            PackageLimits::default(),
        )
        .unwrap();
        let written = root.path().join("secrets/default/db/password");
        assert_eq!(std::fs::read(&written).unwrap(), b"s3cret");
        for bad in ["etc/cron.d/evil", "secrets", "userfunc/x"] {
            let tar = tar_files(&[file(bad)]).unwrap();
            let e = unpack_files(&tar, root.path(), PackageLimits::default()).unwrap_err();
            assert_eq!(e.code(), "invalid", "{bad}");
        }
        assert!(!root.path().join("etc").exists());
        creds.revoke(&digest);
        assert!(creds
            .check_files(Some(&credential), &"a".repeat(64))
            .is_err());
    }

    #[test]
    fn a_directory_goes_through_tar_and_comes_back_the_same() {
        use std::os::unix::fs::PermissionsExt;
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("lib/deep")).unwrap();
        std::fs::write(src.path().join("main.py"), "print(1)").unwrap();
        std::fs::write(src.path().join("lib/deep/x.txt"), "x").unwrap();
        std::fs::write(src.path().join("run.sh"), "#!/bin/sh").unwrap();
        std::fs::set_permissions(
            src.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let tar = tar_dir(src.path()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let n = unpack_tar(&tar[..], dest.path(), PackageLimits::default()).unwrap();
        assert_eq!(n, 5);
        assert_eq!(
            std::fs::read_to_string(dest.path().join("lib/deep/x.txt")).unwrap(),
            "x"
        );
        let mode = std::fs::metadata(dest.path().join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "the executable bit is kept");
    }

    /// A tar with one entry of this raw name and type (the tar crate's own
    /// writer refuses `..`, an attacker's does not).
    fn raw_tar(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        {
            let bytes = header.as_old_mut();
            bytes.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                bytes.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        header.set_entry_type(kind);
        header.set_size(if kind.is_file() { 4 } else { 0 });
        header.set_mode(0o644);
        header.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        let data: &[u8] = if kind.is_file() { b"evil" } else { b"" };
        b.append(&header, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn the_fetcher_refuses_paths_that_escape_and_links() {
        let dest = tempfile::tempdir().unwrap();
        let inner = dest.path().join("pkg");
        std::fs::create_dir(&inner).unwrap();
        for name in ["../escape.txt", "/etc/evil", "a/../../escape.txt"] {
            let tar = raw_tar(name, tar::EntryType::Regular, None);
            let e = unpack_tar(&tar[..], &inner, PackageLimits::default()).unwrap_err();
            assert_eq!(e.code(), "invalid", "{name}: {e}");
        }
        let link = raw_tar("passwd", tar::EntryType::Symlink, Some("/etc/passwd"));
        let e = unpack_tar(&link[..], &inner, PackageLimits::default()).unwrap_err();
        assert!(e.to_string().contains("not a file"), "{e}");
        assert!(!dest.path().join("escape.txt").exists());
        assert!(std::fs::read_dir(&inner).unwrap().next().is_none());
        assert!(safe_relative(Path::new("ok/file.py")).is_ok());
        assert!(safe_relative(Path::new("")).is_err());
        assert!(is_digest(&"a".repeat(64)));
        assert!(!is_digest("../../etc"));
    }
}
