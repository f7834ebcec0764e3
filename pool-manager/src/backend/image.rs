//! OCI images for the container backend: an environment's `image` is an OCI image
//! layout on disk (a directory with `index.json` and `blobs/`, or an `oci-archive`
//! tar of one). This module resolves it to the manifest for this machine's
//! platform, checks every blob against its digest, and unpacks the layers once
//! into `<images>/<manifest digest>/rootfs`, which every instance of the image
//! shares read-only. There is no registry client: nothing is ever pulled.
//!
//! Unpacking is defensive, since an image is as untrusted as the code it runs:
//! paths stay inside the root (no `..`, and nothing is ever written through a
//! symbolic link), device nodes are skipped, ownership and set-id bits are
//! dropped, and the total size is bounded. It happens in a temporary directory
//! renamed into place at the end, so a half-unpacked image is never used.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use oci_spec::image::{Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

/// Most bytes of file content one image may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 4 << 30;
/// Most entries (files, directories, links) one image may unpack to.
const MAX_ENTRIES: u64 = 1_000_000;
/// Most bytes of a JSON document of the layout (index, manifest, config).
const MAX_DOCUMENT_BYTES: u64 = 4 << 20;
/// Most files an `oci-archive` tar may hold.
const MAX_ARCHIVE_FILES: usize = 100_000;
/// The port Fission's runtime images listen on.
pub const RUNTIME_PORT: u16 = 8888;

/// What an instance of an image runs, from the image's configuration.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest's digest (`sha256:...`): the cache key.
    pub digest: String,
    /// The unpacked root, shared read-only by every instance of the image.
    pub rootfs: PathBuf,
    /// `Entrypoint` followed by `Cmd`.
    pub args: Vec<String>,
    /// `Env`, as `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`, or `/`.
    pub cwd: String,
}

/// Checks, cheaply, that `path` names an image this machine can run: the layout
/// reads, the manifest and configuration match their digests, and every layer is
/// there with its size (layer contents are checked when unpacked).
pub fn check(path: &str) -> Result<(), String> {
    let resolved = resolve(path)?;
    resolved.layout.present(&resolved.manifest)
}

/// The digest of the manifest `path` holds for this machine now: what tells an
/// image rebuilt at the same path from the one unpacked before.
pub fn digest(path: &str) -> Result<String, String> {
    resolve(path).map(|r| r.digest)
}

/// The name an image unpacked from a manifest of digest `digest` has under
/// the images directory.
pub fn unpacked_name(digest: &str) -> String {
    digest.replace(':', "-")
}

/// Removes the unpacked images under `dir` whose names (`unpacked_name`) are
/// not in `used` and that were neither unpacked nor used by an instance start
/// within `grace` (an instance still draining from an image its environment
/// no longer names keeps it). Answers their names and bytes.
pub fn prune(dir: &Path, used: &HashSet<String>, grace: std::time::Duration) -> (Vec<String>, u64) {
    let now = std::time::SystemTime::now();
    let mut removed = Vec::new();
    let mut bytes = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (removed, bytes);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let recent = std::fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .map_or(true, |t| now.duration_since(t).unwrap_or_default() < grace);
        if !name.starts_with("sha256-") || used.contains(&name) || recent || !path.is_dir() {
            continue;
        }
        // Moved away first: a start that looks for it from now unpacks it again.
        let away = dir.join(format!(
            ".tmp-pruned-{name}-{}-{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        if std::fs::rename(&path, &away).is_err() {
            continue;
        }
        bytes += crate::package::tree_bytes(&away);
        let _ = std::fs::remove_dir_all(&away);
        removed.push(name);
    }
    (removed, bytes)
}

/// Where the local image directory keeps the image `reference`
/// (`registry/org/name[:tag]`, tag `latest` when none): `<dir>/refs/<name>/<tag>`,
/// an OCI layout directory or an oci-archive tar. None when it is not there or
/// the reference cannot name a path below the directory.
pub fn local_reference(dir: &Path, reference: &str) -> Option<PathBuf> {
    let (name, tag) = match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (reference, "latest"),
    };
    let safe =
        |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('\0') && !s.contains('@');
    if !name.split('/').all(safe) || !safe(tag) || tag.contains('/') {
        return None;
    }
    let path = dir.join("refs").join(name).join(tag);
    path.exists().then_some(path)
}

/// A layout whose manifest and configuration have been read and verified.
struct Resolved {
    layout: Layout,
    digest: String,
    manifest: ImageManifest,
    config: ImageConfiguration,
}

/// The message for a path that holds no image (including registry names).
fn not_an_image(path: &str) -> String {
    format!(
        "no image at {path}: give an OCI layout directory or oci-archive tar; registry pulls are not supported"
    )
}

/// Reads `path`'s index, picks the manifest for this machine, reads it and its
/// configuration, checking both against their digests.
fn resolve(path: &str) -> Result<Resolved, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(not_an_image(path));
    }
    let meta = std::fs::metadata(p).map_err(|_| not_an_image(path))?;
    let layout = if meta.is_dir() {
        if !p.join("index.json").is_file() {
            return Err(format!(
                "{path} is not an OCI image layout: it has no index.json"
            ));
        }
        Layout::Dir(p.to_path_buf())
    } else if meta.is_file() {
        Layout::archive(p)?
    } else {
        return Err(not_an_image(path));
    };
    let index = layout
        .document("index.json")
        .and_then(|b| ImageIndex::from_reader(&b[..]).map_err(|e| e.to_string()))
        .map_err(|e| format!("{path}: cannot read index.json: {e}"))?;
    let mut chosen = choose(index.manifests(), path)?;
    // An index may point at a nested index (a multi-platform image).
    for _ in 0..2 {
        if !is_index(&chosen) {
            break;
        }
        let nested = layout.blob_bytes(&chosen)?;
        let nested = ImageIndex::from_reader(&nested[..])
            .map_err(|e| format!("{path}: cannot read the index {}: {e}", chosen.digest()))?;
        chosen = choose(nested.manifests(), path)?;
    }
    if is_index(&chosen) {
        return Err(format!("{path}: image indexes nest too deep"));
    }
    let bytes = layout.blob_bytes(&chosen)?;
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| format!("{path}: cannot read the manifest {}: {e}", chosen.digest()))?;
    let bytes = layout.blob_bytes(manifest.config())?;
    let config = ImageConfiguration::from_reader(&bytes[..]).map_err(|e| {
        format!(
            "{path}: cannot read the image configuration {}: {e}",
            manifest.config().digest()
        )
    })?;
    let arch = config.architecture().to_string();
    if arch != host_arch() || config.os().to_string() != "linux" {
        return Err(format!(
            "{path}: the image is for {}/{arch}; this machine runs linux/{}",
            config.os(),
            host_arch()
        ));
    }
    Ok(Resolved {
        layout,
        digest: chosen.digest().to_string(),
        manifest,
        config,
    })
}

/// This machine's architecture in the Go names images use.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn is_index(d: &Descriptor) -> bool {
    let t = d.media_type().to_string();
    t == "application/vnd.oci.image.index.v1+json"
        || t == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// The manifest for linux on this machine's architecture, or the only one.
fn choose(manifests: &[Descriptor], path: &str) -> Result<Descriptor, String> {
    let ours = manifests.iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
        })
    });
    match (ours, manifests) {
        (Some(d), _) => Ok(d.clone()),
        (None, [only]) => Ok(only.clone()),
        (None, []) => Err(format!("{path}: the image index lists no manifest")),
        (None, many) => Err(format!(
            "{path}: the image has no manifest for linux/{} (it has {})",
            host_arch(),
            many.iter()
                .map(|d| d
                    .platform()
                    .as_ref()
                    .map(|p| format!("{}/{}", p.os(), p.architecture()))
                    .unwrap_or_else(|| "one without a platform".into()))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Where a layout's files are: a directory, or regions of one tar file.
enum Layout {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        /// Each regular file's (offset of its data, size), by path in the archive.
        files: HashMap<String, (u64, u64)>,
    },
}

impl Layout {
    /// Indexes an `oci-archive` tar without unpacking it.
    fn archive(path: &Path) -> Result<Layout, String> {
        let shown = path.display();
        let file = File::open(path).map_err(|e| format!("cannot open {shown}: {e}"))?;
        let mut archive = tar::Archive::new(file);
        let mut files = HashMap::new();
        // The tar reader's own error quotes the bytes it could not read: of a
        // file that is no tar (`/etc/shadow`), its text, which an error must
        // not carry back to the caller.
        let not_a_tar = |_| format!("{shown} is not an oci-archive tar");
        let entries = archive.entries_with_seek().map_err(not_a_tar)?;
        for entry in entries {
            let entry = entry.map_err(not_a_tar)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry
                .path()
                .map_err(|e| format!("{shown}: bad entry name: {e}"))?;
            let Ok(rel) = relative(&name) else {
                continue;
            };
            files.insert(
                rel.to_string_lossy().into_owned(),
                (entry.raw_file_position(), entry.size()),
            );
            if files.len() > MAX_ARCHIVE_FILES {
                return Err(format!("{shown}: more than {MAX_ARCHIVE_FILES} files"));
            }
        }
        if !files.contains_key("index.json") {
            return Err(format!(
                "{shown} is not an oci-archive: it has no index.json (give an OCI layout directory or an oci-archive tar)"
            ));
        }
        Ok(Layout::Archive {
            path: path.to_path_buf(),
            files,
        })
    }

    /// Opens the file at `rel` in the layout: its reader and its size.
    fn open(&self, rel: &str) -> io::Result<(Box<dyn Read + Send>, u64)> {
        match self {
            Layout::Dir(dir) => {
                let f = File::open(dir.join(rel))?;
                let len = f.metadata()?.len();
                Ok((Box::new(f), len))
            }
            Layout::Archive { path, files } => {
                let &(offset, size) = files
                    .get(rel)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in the archive"))?;
                let mut f = File::open(path)?;
                f.seek(SeekFrom::Start(offset))?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    fn size(&self, rel: &str) -> io::Result<u64> {
        match self {
            Layout::Dir(dir) => Ok(std::fs::metadata(dir.join(rel))?.len()),
            Layout::Archive { files, .. } => files
                .get(rel)
                .map(|&(_, size)| size)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in the archive")),
        }
    }

    /// A small JSON document of the layout, whole.
    fn document(&self, rel: &str) -> Result<Vec<u8>, String> {
        let (r, len) = self.open(rel).map_err(|e| e.to_string())?;
        if len > MAX_DOCUMENT_BYTES {
            return Err(format!("{len} bytes is too large for a JSON document"));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        r.take(MAX_DOCUMENT_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        Ok(bytes)
    }

    /// A blob's reader, after checking that it exists with the descriptor's size.
    fn blob(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>, String> {
        let rel = blob_path(d)?;
        let (r, len) = self
            .open(&rel)
            .map_err(|e| format!("the blob {} is missing: {e}", d.digest()))?;
        if len != d.size() {
            return Err(format!(
                "the blob {} has {len} bytes where its descriptor says {}",
                d.digest(),
                d.size()
            ));
        }
        Ok(r)
    }

    /// A small blob (a manifest or a configuration), whole and verified.
    fn blob_bytes(&self, d: &Descriptor) -> Result<Vec<u8>, String> {
        if d.size() > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "the document {} is too large ({} bytes)",
                d.digest(),
                d.size()
            ));
        }
        let mut bytes = Vec::new();
        self.blob(d)?
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the blob {}: {e}", d.digest()))?;
        verify(d, &Sha256::digest(&bytes))?;
        Ok(bytes)
    }

    /// Every layer blob is present with its size.
    fn present(&self, manifest: &ImageManifest) -> Result<(), String> {
        for layer in manifest.layers() {
            let rel = blob_path(layer)?;
            match self.size(&rel) {
                Ok(len) if len == layer.size() => {}
                Ok(len) => {
                    return Err(format!(
                        "the layer {} has {len} bytes where the manifest says {}",
                        layer.digest(),
                        layer.size()
                    ))
                }
                Err(_) => return Err(format!("the layer {} is missing", layer.digest())),
            }
        }
        Ok(())
    }
}

/// `blobs/sha256/<hex>`: only sha256 digests are supported.
fn blob_path(d: &Descriptor) -> Result<String, String> {
    match d.digest().algorithm() {
        // The digest's hex part was checked when it was parsed: no path tricks.
        DigestAlgorithm::Sha256 => Ok(format!("blobs/sha256/{}", d.digest().digest())),
        other => Err(format!(
            "the blob {} uses {other}: only sha256 digests are supported",
            d.digest()
        )),
    }
}

fn verify(d: &Descriptor, hash: &[u8]) -> Result<(), String> {
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    if hex == d.digest().digest() {
        Ok(())
    } else {
        Err(format!(
            "the blob {} does not match its digest (its content hashes to sha256:{hex})",
            d.digest()
        ))
    }
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// The unpacked images under one directory, each unpacked once.
pub struct ImageStore {
    dir: PathBuf,
    /// One lock per manifest digest, so concurrent starts unpack it once.
    unpacking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl ImageStore {
    /// Images under `dir`; removes what an interrupted unpack left there.
    pub fn new(dir: PathBuf) -> ImageStore {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        ImageStore {
            dir,
            unpacking: Mutex::default(),
        }
    }

    /// The image at `path`, unpacked (now, or by an earlier call).
    pub async fn prepare(&self, path: &str) -> Result<Image, String> {
        let owned = path.to_string();
        let resolved = tokio::task::spawn_blocking(move || resolve(&owned))
            .await
            .map_err(|e| format!("resolving the image failed: {e}"))??;
        let key = unpacked_name(&resolved.digest);
        let lock = self
            .unpacking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        let dir = self.dir.clone();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || unpack_once(&dir, &key, &path, resolved))
            .await
            .map_err(|e| format!("unpacking the image failed: {e}"))?
    }
}

/// Unpacks `resolved` into `<dir>/<key>` unless it is there already.
fn unpack_once(dir: &Path, key: &str, path: &str, resolved: Resolved) -> Result<Image, String> {
    let target = dir.join(key);
    let config = resolved.config.config().clone().unwrap_or_default();
    let mut args: Vec<String> = config.entrypoint().clone().unwrap_or_default();
    args.extend(config.cmd().clone().unwrap_or_default());
    if args.is_empty() {
        return Err(format!("{path}: the image has neither Entrypoint nor Cmd"));
    }
    let cwd = config
        .working_dir()
        .clone()
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    let image = Image {
        digest: resolved.digest.clone(),
        rootfs: target.join("rootfs"),
        args,
        env: config.env().clone().unwrap_or_default(),
        cwd: cwd.clone(),
    };
    if target.join("rootfs").is_dir() {
        // Used now: `prune` keeps what was used within its grace.
        crate::package::touch(&target);
        return Ok(image);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let temp = dir.join(format!(
        ".tmp-{key}-{}-{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let result = unpack_into(&temp.join("rootfs"), &resolved, &cwd)
        .map_err(|e| format!("{path}: {e}"))
        .and_then(|()| match std::fs::rename(&temp, &target) {
            Ok(()) => Ok(()),
            // Unpacked meanwhile by someone else: theirs is as good.
            Err(_) if target.join("rootfs").is_dir() => Ok(()),
            Err(e) => Err(format!("cannot move the unpacked image into place: {e}")),
        });
    if temp.exists() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result.map(|()| image)
}

/// Applies every layer in order into `root`, then makes the mount points the
/// container needs.
fn unpack_into(root: &Path, resolved: &Resolved, cwd: &str) -> Result<(), String> {
    let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()));
    mkdir(root)?;
    set_mode(root, 0o755).map_err(|e| e.to_string())?;
    let mut budget = Budget::default();
    for layer in resolved.manifest.layers() {
        let media = layer.media_type().to_string();
        if media.contains("zstd") {
            return Err(format!(
                "the layer {} is zstd-compressed, which is not supported (use gzip or plain tar layers)",
                layer.digest()
            ));
        }
        let mut hashing = Hashing {
            inner: io::BufReader::new(resolved.layout.blob(layer)?),
            hash: Sha256::new(),
            len: 0,
        };
        let gzip = io::BufRead::fill_buf(&mut hashing.inner)
            .map(|b| b.starts_with(&[0x1f, 0x8b]))
            .map_err(|e| format!("cannot read the layer {}: {e}", layer.digest()))?;
        let applied = if gzip {
            let mut gz = flate2::read::GzDecoder::new(&mut hashing);
            let applied = apply_layer(root, &mut gz, &mut budget);
            // Drain what the decoder left, so that the whole blob is hashed.
            applied.and_then(|()| {
                io::copy(&mut gz, &mut io::sink())
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        } else {
            apply_layer(root, &mut hashing, &mut budget)
        };
        // A blob that does not match its digest is the likelier cause of a failure.
        let drained = io::copy(&mut hashing, &mut io::sink());
        verify(layer, &hashing.hash.clone().finalize())?;
        if hashing.len != layer.size() {
            return Err(format!(
                "the layer {} is shorter than its descriptor says",
                layer.digest()
            ));
        }
        applied.map_err(|e| format!("the layer {}: {e}", layer.digest()))?;
        drained.map_err(|e| format!("cannot read the layer {}: {e}", layer.digest()))?;
    }
    // Mount points on a read-only root must exist beforehand (where a link
    // stands in the way, the OCI runtime resolves it inside the root).
    for dir in ["proc", "dev", "tmp", "userfunc", cwd] {
        let rel = relative(Path::new(dir)).map_err(|e| format!("{dir}: {e}"))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let Ok(path) = real_parent(root, &rel) else {
            continue;
        };
        if path.symlink_metadata().is_err() {
            mkdir(&path)?;
            let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
            set_mode(&path, mode).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// What one image has used of its limits so far.
#[derive(Default)]
struct Budget {
    bytes: u64,
    entries: u64,
}

/// Applies one uncompressed layer tar onto `root`, with OCI whiteouts.
fn apply_layer(root: &Path, layer: &mut dyn Read, budget: &mut Budget) -> Result<(), String> {
    let mut archive = tar::Archive::new(layer);
    // What this layer has written: an opaque whiteout spares these.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let entries = archive.entries().map_err(|e| format!("not a tar: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a tar: {e}"))?;
        budget.entries += 1;
        if budget.entries > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} files"));
        }
        let name = entry
            .path()
            .map_err(|e| format!("bad entry name: {e}"))?
            .into_owned();
        let rel = relative(&name).map_err(|e| format!("{}: {e}", name.display()))?;
        let Some(file_name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue; // the root itself
        };
        let shown = rel.display();
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            let parent = rel.parent().unwrap_or(Path::new(""));
            if hidden == ".wh..opq" {
                opaque(root, parent, &written).map_err(|e| format!("{shown}: {e}"))?;
            } else if !hidden.starts_with(".wh.") {
                if let Some(path) = existing(root, &parent.join(hidden)) {
                    remove(&path).map_err(|e| format!("{shown}: {e}"))?;
                }
            }
            continue;
        }
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok();
        let link = entry
            .link_name()
            .map_err(|e| format!("{shown}: bad link name: {e}"))?
            .map(|l| l.into_owned());
        let path = real_parent(root, &rel).map_err(|e| format!("{shown}: {e}"))?;
        let result = if kind.is_dir() {
            match path.symlink_metadata() {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => remove(&path).and_then(|()| std::fs::create_dir(&path)),
                Err(_) => std::fs::create_dir(&path),
            }
            // Never set-id; the sticky bit stays (a /tmp).
            .and_then(|()| set_mode(&path, mode & 0o1777))
        } else if kind.is_file() {
            budget.bytes = budget.bytes.saturating_add(entry.size());
            if budget.bytes > MAX_UNPACKED_BYTES {
                return Err(format!(
                    "the image unpacks to more than the limit of {} GiB",
                    MAX_UNPACKED_BYTES >> 30
                ));
            }
            write_file(&path, &mut entry, mode & 0o777, mtime)
        } else if kind.is_symlink() {
            match &link {
                // The target is only ever resolved inside the container.
                Some(target) => {
                    remove(&path).and_then(|()| std::os::unix::fs::symlink(target, &path))
                }
                None => Err(io::Error::other("a symbolic link without a target")),
            }
        } else if kind.is_hard_link() {
            let Some(target) = &link else {
                return Err(format!("{shown}: a hard link without a target"));
            };
            let source = relative(target)
                .and_then(|t| real_parent(root, &t))
                .map_err(|e| format!("{shown}: link to {}: {e}", target.display()))?;
            match source.symlink_metadata() {
                Ok(m) if m.is_file() => {
                    remove(&path).and_then(|()| std::fs::hard_link(&source, &path))
                }
                _ => Err(io::Error::other(format!(
                    "a hard link to {}, which is not a file of the image",
                    target.display()
                ))),
            }
        } else {
            // Device nodes, fifos and the like: never created.
            continue;
        };
        result.map_err(|e| format!("{shown}: {e}"))?;
        written.insert(rel);
    }
    Ok(())
}

/// Writes one regular file, never through an existing link.
fn write_file(path: &Path, data: &mut dyn Read, mode: u32, mtime: Option<u64>) -> io::Result<()> {
    remove(path)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    io::copy(data, &mut f)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    if let Some(t) = mtime {
        let _ = f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t));
    }
    Ok(())
}

/// Removes whatever is at `path` (a link itself, not its target); nothing there is fine.
fn remove(path: &Path) -> io::Result<()> {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Hides everything under `dir` that lower layers put there.
fn opaque(root: &Path, dir: &Path, written: &HashSet<PathBuf>) -> io::Result<()> {
    let Some(full) = existing(root, dir) else {
        return Ok(());
    };
    if !full.symlink_metadata()?.is_dir() {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(&full) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if !written.contains(&dir.join(e.file_name())) {
            remove(&e.path())?;
        }
    }
    Ok(())
}

/// `rel` under `root` if it exists there, reached through real directories only
/// (a whiteout never removes anything through a link).
fn existing(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            path.push(c);
            if !path.symlink_metadata().ok()?.is_dir() {
                return None;
            }
        }
    }
    let path = match rel.file_name() {
        Some(name) => path.join(name),
        None => path,
    };
    path.symlink_metadata().ok().map(|_| path)
}

/// `rel` under `root`, after making every directory above it exist as a real
/// directory: a symbolic link on the way is refused, never followed.
fn real_parent(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut path = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            path.push(c);
            match path.symlink_metadata() {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(io::Error::other(format!(
                        "writes through the symbolic link {}",
                        path.strip_prefix(root).unwrap_or(&path).display()
                    )))
                }
                Ok(_) => {
                    return Err(io::Error::other(format!(
                        "{} is not a directory",
                        path.strip_prefix(root).unwrap_or(&path).display()
                    )))
                }
                Err(_) => {
                    std::fs::create_dir(&path)?;
                    set_mode(&path, 0o755)?;
                }
            }
        }
    }
    Ok(match rel.file_name() {
        Some(name) => path.join(name),
        None => path,
    })
}

/// A tar entry's path as a path relative to the root: `./` and a leading `/`
/// dropped; `..` refused.
fn relative(name: &Path) -> io::Result<PathBuf> {
    let mut rel = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::other("a path that leaves the image's root"))
            }
        }
    }
    Ok(rel)
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // Raw names, so that hostile ones can be written.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn apply(root: &Path, layer: &[u8]) -> Result<(), String> {
        apply_layer(root, &mut &layer[..], &mut Budget::default())
    }

    /// A file that is not an image is said to be none, without a word of
    /// what it holds (the tar reader's errors quote the bytes it read).
    #[test]
    fn a_file_that_is_no_image_is_refused_without_its_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let shadow = tmp.path().join("shadow");
        std::fs::write(&shadow, "root:*:20228:0:99999:7:::\n".repeat(40)).unwrap();
        let err = check(shadow.to_str().unwrap()).unwrap_err();
        assert!(err.contains("is not an oci-archive tar"), "{err}");
        assert!(!err.contains("root:") && !err.contains("20228"), "{err}");
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        use tar::EntryType::{Directory, Regular};
        apply(
            root,
            &tar_of(&[
                ("etc/", Directory, b"", None),
                ("etc/a", Regular, b"a", None),
                ("etc/b", Regular, b"b", None),
                ("opt/x/old", Regular, b"old", None),
            ]),
        )
        .unwrap();
        apply(
            root,
            &tar_of(&[
                ("etc/.wh.a", Regular, b"", None),
                ("opt/x/new", Regular, b"new", None),
                ("opt/x/.wh..wh..opq", Regular, b"", None),
            ]),
        )
        .unwrap();
        assert!(!root.join("etc/a").exists());
        assert_eq!(std::fs::read(root.join("etc/b")).unwrap(), b"b");
        assert!(!root.join("opt/x/old").exists());
        assert_eq!(std::fs::read(root.join("opt/x/new")).unwrap(), b"new");
        assert!(!root.join("opt/x/.wh..wh..opq").exists());
    }

    #[test]
    fn nothing_is_written_outside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        use tar::EntryType::{Link, Regular, Symlink};
        let escape = apply(&root, &tar_of(&[("../escaped", Regular, b"x", None)]));
        assert!(escape.is_err());
        assert!(!tmp.path().join("escaped").exists());
        // A link to outside, then a write through it.
        let through = apply(
            &root,
            &tar_of(&[
                ("out", Symlink, b"", Some(tmp.path().to_str().unwrap())),
                ("out/escaped", Regular, b"x", None),
            ]),
        );
        assert!(through.unwrap_err().contains("symbolic link"));
        assert!(!tmp.path().join("escaped").exists());
        // A file written where a link to outside stands replaces the link.
        std::fs::write(tmp.path().join("victim"), b"safe").unwrap();
        apply(
            &root,
            &tar_of(&[
                (
                    "v",
                    Symlink,
                    b"",
                    Some(tmp.path().join("victim").to_str().unwrap()),
                ),
                ("v", Regular, b"pwned", None),
            ]),
        )
        .unwrap();
        assert_eq!(std::fs::read(tmp.path().join("victim")).unwrap(), b"safe");
        // A whiteout through a link removes nothing outside.
        apply(
            &root,
            &tar_of(&[
                ("out2", Symlink, b"", Some(tmp.path().to_str().unwrap())),
                ("out2/.wh.victim", Regular, b"", None),
                ("out2/.wh..wh..opq", Regular, b"", None),
            ]),
        )
        .unwrap();
        assert!(tmp.path().join("victim").exists());
        // A hard link to a host file.
        let hard = apply(&root, &tar_of(&[("h", Link, b"", Some("../victim"))]));
        assert!(hard.is_err());
    }

    #[test]
    fn an_image_larger_than_the_limit_is_refused_before_it_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_path("huge").unwrap();
        h.set_size(MAX_UNPACKED_BYTES + 1);
        h.set_cksum();
        // Only the header: the limit is checked before any content is read.
        let err = apply(tmp.path(), h.as_bytes()).unwrap_err();
        assert!(err.contains("more than the limit of 4 GiB"), "{err}");
        assert!(!tmp.path().join("huge").exists());
    }

    #[test]
    fn device_nodes_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        use tar::EntryType::{Char, Regular};
        apply(
            tmp.path(),
            &tar_of(&[("null", Char, b"", None), ("f", Regular, b"f", None)]),
        )
        .unwrap();
        assert!(!tmp.path().join("null").exists());
        assert!(tmp.path().join("f").exists());
    }
}
