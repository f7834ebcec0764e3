//! Secrets and configmaps: named sets of files (`key -> value`) that functions
//! list and read at Fission's paths, `/secrets/<namespace>/<name>/<key>` and
//! `/configs/<namespace>/<name>/<key>`. Secret values are sealed at rest with
//! ChaCha20-Poly1305 under a key kept in its own file (`<data-dir>/secrets.key`,
//! mode 0600, never in sled), with a fresh random nonce per write and the
//! record's kind, namespace and name as associated data; the API shows a
//! secret's keys and sizes, never its values. ConfigMap values are plain.
//!
//! Changing a secret or configmap gives every function that lists it a new
//! generation, so its warm instances are retired as on a function update and
//! the next call sees the new values.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::backend::StagedFile;
use crate::catalog::not_found_in;
use crate::error::{Error, Result};
use crate::pool::PoolManager;
use crate::resources::{validate_name, Function, ObjectRef};
use crate::store::Kind;

/// The most a secret's or configmap's keys and values may hold together
/// (Kubernetes' limit).
pub const MAX_DATA_BYTES: usize = 1 << 20;
/// The longest key (a file name).
pub const MAX_KEY_LEN: usize = 253;
/// The most keys one secret or configmap may have.
pub const MAX_KEYS: usize = 256;
/// The most secrets, and the most configmaps, one function may list (so an
/// instance's `/secrets` and `/configs` have a size that always fits).
pub const MAX_REFS: usize = 16;
/// The namespace of a resource that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Which of the two: their handling differs only in sealing and in what is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    Secret,
    ConfigMap,
}

impl DataKind {
    pub fn noun(self) -> &'static str {
        match self {
            DataKind::Secret => "secret",
            DataKind::ConfigMap => "configmap",
        }
    }
    fn tree(self) -> &'static str {
        match self {
            DataKind::Secret => "secrets",
            DataKind::ConfigMap => "configmaps",
        }
    }
    /// The top directory inside an instance (Fission's).
    pub fn dir(self) -> &'static str {
        match self {
            DataKind::Secret => "secrets",
            DataKind::ConfigMap => "configs",
        }
    }
    fn refs(self, f: &Function) -> &[ObjectRef] {
        match self {
            DataKind::Secret => &f.secrets,
            DataKind::ConfigMap => &f.configmaps,
        }
    }
}

/// A secret or configmap as a request declares it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub name: String,
    /// `default` unless given here or in `?namespace=`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// File name -> contents.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// Shows keys only: a secret's values must never reach a log.
impl std::fmt::Debug for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSpec")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What the API shows: the keys and their sizes in bytes; a configmap's values too.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataView {
    pub name: String,
    pub namespace: String,
    pub keys: Vec<String>,
    pub sizes: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<BTreeMap<String, String>>,
    /// An update that changed nothing says so (and retired no instance): how
    /// `spec apply` knows a secret, whose values are never shown, is up to date.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
}

/// One stored secret or configmap.
#[derive(Serialize, Deserialize)]
struct Record {
    name: String,
    namespace: String,
    sizes: BTreeMap<String, usize>,
    /// A configmap's values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<BTreeMap<String, String>>,
    /// A secret's values: base64 of nonce, then the sealed JSON map and its tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

impl Record {
    fn view(&self, kind: DataKind) -> DataView {
        DataView {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            keys: self.sizes.keys().cloned().collect(),
            sizes: self.sizes.clone(),
            data: match kind {
                DataKind::Secret => None,
                DataKind::ConfigMap => self.data.clone(),
            },
            unchanged: false,
        }
    }
}

/// Why the key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the secrets key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the secrets key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a random secrets key")]
    Random,
    #[error("the secrets key file {0} must hold 64 hex digits (a 256-bit key)")]
    Invalid(PathBuf),
}

/// Why a sealed value cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot draw a random nonce")]
    Random,
    #[error("the sealed value is too short")]
    Truncated,
    #[error("the sealed value does not open with this key (altered, or sealed under another key)")]
    Tampered,
}

/// Seals and opens values with ChaCha20-Poly1305. `Debug` shows no key.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    fn from_key(bytes: &[u8; 32]) -> Sealer {
        // A 32-byte key is what CHACHA20_POLY1305 takes: `new` cannot fail.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .unwrap_or_else(|_| unreachable!("a 32-byte ChaCha20-Poly1305 key"));
        Sealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }
    }

    /// Reads the key at `path`, or, when there is none, generates one and writes
    /// it there (hex), created with mode 0600 and linked into place whole, so a
    /// crash cannot leave a half-written key (as the API token file).
    pub fn load_or_create(path: &Path) -> std::result::Result<Sealer, KeyError> {
        if path.exists() {
            return Sealer::load(path);
        }
        let rng = SystemRandom::new();
        let mut key = [0u8; 32];
        rng.fill(&mut key).map_err(|_| KeyError::Random)?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        match crate::private_file::create_new(path, &hex) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated the secrets key");
                Ok(Sealer::from_key(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Sealer::load(path),
            Err(source) => Err(KeyError::Create {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn load(path: &Path) -> std::result::Result<Sealer, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the secrets key file is readable by other users; chmod 600 it"
            );
        }
        let hex = text.trim();
        let invalid = || KeyError::Invalid(path.to_path_buf());
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
        }
        Ok(Sealer::from_key(&key))
    }

    /// `plaintext` sealed under a fresh random nonce, bound to `aad`: nonce, then
    /// ciphertext and tag.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> std::result::Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut sealed = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut sealed,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext `seal` was given, if `sealed` is untouched and `aad` the same.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> std::result::Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Truncated);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Truncated)?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| SealError::Tampered)?;
        Ok(plain.to_vec())
    }
}

/// The stored secrets and configmaps.
pub struct DataStore {
    db: sled::Db,
    secrets: sled::Tree,
    configmaps: sled::Tree,
    sealer: Sealer,
    /// Held while references between functions and secrets/configmaps are
    /// checked and changed, so a delete cannot slip between a function's check
    /// and its write.
    pub(crate) refs: tokio::sync::Mutex<()>,
}

impl DataStore {
    /// Opens the trees and the key file `<data_dir>/secrets.key` (created on first start).
    pub fn open(db: &sled::Db, data_dir: &Path) -> Result<DataStore> {
        let sealer = Sealer::load_or_create(&data_dir.join("secrets.key"))
            .map_err(|e| Error::Storage(e.to_string()))?;
        Ok(DataStore {
            db: db.clone(),
            secrets: db.open_tree(DataKind::Secret.tree())?,
            configmaps: db.open_tree(DataKind::ConfigMap.tree())?,
            sealer,
            refs: tokio::sync::Mutex::new(()),
        })
    }

    fn tree(&self, kind: DataKind) -> &sled::Tree {
        match kind {
            DataKind::Secret => &self.secrets,
            DataKind::ConfigMap => &self.configmaps,
        }
    }

    fn record(&self, kind: DataKind, namespace: &str, name: &str) -> Result<Option<Record>> {
        match self.tree(kind).get(store_key(namespace, name))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    fn encode(&self, kind: DataKind, spec: &Checked) -> Result<Vec<u8>> {
        let sizes = spec
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect();
        let mut record = Record {
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            sizes,
            data: None,
            sealed: None,
        };
        match kind {
            DataKind::ConfigMap => record.data = Some(spec.data.clone()),
            DataKind::Secret => {
                let plain =
                    serde_json::to_vec(&spec.data).map_err(|e| Error::Internal(e.to_string()))?;
                let sealed = self
                    .sealer
                    .seal(aad(kind, &spec.namespace, &spec.name).as_bytes(), &plain)
                    .map_err(|e| Error::Internal(format!("cannot seal the secret: {e}")))?;
                record.sealed = Some(base64::engine::general_purpose::STANDARD.encode(sealed));
            }
        }
        serde_json::to_vec(&record).map_err(|e| Error::Internal(e.to_string()))
    }

    /// The values of a stored record (a secret's opened).
    fn values(&self, kind: DataKind, record: &Record) -> Result<BTreeMap<String, String>> {
        match kind {
            DataKind::ConfigMap => Ok(record.data.clone().unwrap_or_default()),
            DataKind::Secret => {
                let what = format!("secret {}/{}", record.namespace, record.name);
                let Some(sealed) = &record.sealed else {
                    return Ok(BTreeMap::new());
                };
                let sealed = base64::engine::general_purpose::STANDARD
                    .decode(sealed)
                    .map_err(|e| Error::Storage(format!("{what}: corrupt record: {e}")))?;
                let plain = self
                    .sealer
                    .open(
                        aad(kind, &record.namespace, &record.name).as_bytes(),
                        &sealed,
                    )
                    .map_err(|e| Error::Storage(format!("{what}: {e}")))?;
                serde_json::from_slice(&plain)
                    .map_err(|e| Error::Storage(format!("{what}: corrupt values: {e}")))
            }
        }
    }
}

/// A spec that passed validation, with its namespace settled.
struct Checked {
    name: String,
    namespace: String,
    data: BTreeMap<String, String>,
}

fn store_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What a sealed value is bound to: moving it to another record fails to open.
fn aad(kind: DataKind, namespace: &str, name: &str) -> String {
    format!("fusion/{}/{namespace}/{name}", kind.noun())
}

fn decode(bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes).map_err(|e| Error::Storage(format!("corrupt record: {e}")))
}

/// A key is a file name: letters, digits, `-`, `_` and `.`, not `.` or `..`
/// (Kubernetes' rule for Secret and ConfigMap keys).
pub fn validate_key(kind: DataKind, key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{}: key {key:?} is not a valid file name: use at most {MAX_KEY_LEN} letters, digits, '-', '_' and '.', and not '.' or '..'",
            kind.noun()
        )))
    }
}

/// Validates `spec`; its namespace is the body's, else `query`'s, else `default`
/// (the two must agree when both are given).
fn check(kind: DataKind, spec: DataSpec, query: Option<&str>) -> Result<Checked> {
    let namespace = match (spec.namespace.as_deref(), query) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::Invalid(format!(
                "the namespace in the body ({a:?}) differs from the one in the query ({b:?})"
            )))
        }
        (Some(ns), _) | (None, Some(ns)) => ns.to_string(),
        (None, None) => DEFAULT_NAMESPACE.to_string(),
    };
    validate_name(kind.noun(), &spec.name)?;
    validate_name("namespace", &namespace)?;
    if spec.data.len() > MAX_KEYS {
        return Err(Error::Invalid(format!(
            "{} {:?}: {} keys, above the limit of {MAX_KEYS}",
            kind.noun(),
            spec.name,
            spec.data.len()
        )));
    }
    let mut total = 0usize;
    for (k, v) in &spec.data {
        validate_key(kind, k)?;
        total += k.len() + v.len();
    }
    if total > MAX_DATA_BYTES {
        return Err(Error::TooLarge(format!(
            "{} {:?}: its keys and values hold {total} bytes, above the limit of {MAX_DATA_BYTES}",
            kind.noun(),
            spec.name
        )));
    }
    Ok(Checked {
        name: spec.name,
        namespace,
        data: spec.data,
    })
}

/// Checks a function's secret and configmap references and its environment
/// variables (the parts of `Function::validate` this module owns).
pub fn validate_function_fields(f: &Function) -> Result<()> {
    for kind in [DataKind::Secret, DataKind::ConfigMap] {
        let refs = kind.refs(f);
        if refs.len() > MAX_REFS {
            return Err(Error::Invalid(format!(
                "function: {} {}s listed, above the limit of {MAX_REFS}",
                refs.len(),
                kind.noun()
            )));
        }
        for (i, r) in refs.iter().enumerate() {
            validate_name(kind.noun(), &r.name)?;
            validate_name("namespace", &r.namespace)?;
            if refs[..i].contains(r) {
                return Err(Error::Invalid(format!(
                    "function: {} {}/{} is listed twice",
                    kind.noun(),
                    r.namespace,
                    r.name
                )));
            }
        }
    }
    let mut total = 0usize;
    for (k, v) in &f.env_vars {
        let ok = k
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(Error::Invalid(format!(
                "function: environment variable name {k:?} must be letters, digits and '_', not starting with a digit"
            )));
        }
        if k.starts_with("RUNTIME_") || k.starts_with("FUSION_") {
            return Err(Error::Invalid(format!(
                "function: environment variable {k:?}: names starting with RUNTIME_ or FUSION_ are the runtime's own"
            )));
        }
        if v.contains('\0') {
            return Err(Error::Invalid(format!(
                "function: environment variable {k:?} holds a NUL byte"
            )));
        }
        total += k.len() + v.len();
    }
    if total > 64 * 1024 {
        return Err(Error::Invalid(format!(
            "function: environment variables hold {total} bytes, above the limit of 65536"
        )));
    }
    Ok(())
}

impl PoolManager {
    fn data_store(&self) -> &DataStore {
        &self.inner.data
    }

    pub fn data_item(&self, kind: DataKind, namespace: &str, name: &str) -> Result<DataView> {
        // A name none can have is a mistake (400), as for every kind.
        crate::resources::validate_name(kind.noun(), name)?;
        self.data_store()
            .record(kind, namespace, name)?
            .map(|r| r.view(kind))
            .ok_or_else(|| not_found_in(kind.noun(), namespace, name))
    }

    /// The secrets or configmaps of `namespace`, or of every namespace, by name.
    pub fn data_items(&self, kind: DataKind, namespace: Option<&str>) -> Result<Vec<DataView>> {
        let prefix = namespace.map(|ns| format!("{ns}/")).unwrap_or_default();
        self.data_store()
            .tree(kind)
            .scan_prefix(prefix)
            .values()
            .map(|v| Ok(decode(&v?)?.view(kind)))
            .collect()
    }

    pub async fn create_data(
        &self,
        kind: DataKind,
        spec: DataSpec,
        namespace: Option<&str>,
    ) -> Result<DataView> {
        let spec = check(kind, spec, namespace)?;
        let store = self.data_store();
        let bytes = store.encode(kind, &spec)?;
        let swapped = store.tree(kind).compare_and_swap(
            store_key(&spec.namespace, &spec.name),
            None as Option<&[u8]>,
            Some(bytes.clone()),
        )?;
        if swapped.is_err() {
            return Err(Error::AlreadyExists {
                kind: kind.noun(),
                name: format!("{}/{}", spec.namespace, spec.name),
            });
        }
        store.db.flush_async().await?;
        Ok(decode(&bytes)?.view(kind))
    }

    /// Replaces the values of a secret or configmap; every function that lists
    /// it gets a new generation (its warm instances are retired, the next call
    /// starts one that sees the new values).
    pub async fn update_data(
        &self,
        kind: DataKind,
        name: &str,
        spec: DataSpec,
        namespace: Option<&str>,
    ) -> Result<DataView> {
        let spec = check(kind, spec, namespace)?;
        if spec.name != name {
            return Err(Error::Invalid(format!(
                "the name in the body ({:?}) differs from the name in the path ({name:?})",
                spec.name
            )));
        }
        let store = self.data_store();
        let _refs = store.refs.lock().await;
        let Some(current) = store.record(kind, &spec.namespace, name)? else {
            return Err(not_found_in(kind.noun(), &spec.namespace, name));
        };
        if store.values(kind, &current)? == spec.data {
            let mut view = current.view(kind);
            view.unchanged = true;
            return Ok(view);
        }
        let bytes = store.encode(kind, &spec)?;
        store
            .tree(kind)
            .insert(store_key(&spec.namespace, name), bytes.clone())?;
        store.db.flush_async().await?;
        let wanted = ObjectRef {
            name: name.to_string(),
            namespace: spec.namespace.clone(),
        };
        for mut f in self.inner.store.functions()? {
            if kind.refs(&f).contains(&wanted) {
                f.generation += 1;
                self.inner.store.put(Kind::Function, &f.key(), &f).await?;
                self.inner.install_function(f);
            }
        }
        Ok(decode(&bytes)?.view(kind))
    }

    /// Deletes a secret or configmap no function lists.
    pub async fn delete_data(&self, kind: DataKind, namespace: &str, name: &str) -> Result<()> {
        crate::resources::validate_name(kind.noun(), name)?;
        let store = self.data_store();
        let _refs = store.refs.lock().await;
        if store.record(kind, namespace, name)?.is_none() {
            return Err(not_found_in(kind.noun(), namespace, name));
        }
        let wanted = ObjectRef {
            name: name.to_string(),
            namespace: namespace.to_string(),
        };
        let users: Vec<String> = self
            .inner
            .store
            .functions()?
            .into_iter()
            .filter(|f| kind.refs(f).contains(&wanted))
            .map(|f| f.name)
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "{} {namespace}/{name} is used by functions {}; remove it from them first",
                kind.noun(),
                users.join(", ")
            )));
        }
        store.tree(kind).remove(store_key(namespace, name))?;
        store.db.flush_async().await?;
        Ok(())
    }

    /// Refuses a function whose secrets or configmaps do not exist, or that lists
    /// any where the backend cannot deliver them. Called with `refs` held.
    pub(crate) fn check_data_refs(&self, f: &Function) -> Result<()> {
        if (!f.secrets.is_empty() || !f.configmaps.is_empty())
            && !self.inner.cfg.backend.delivers_files()
        {
            return Err(Error::Unsupported(format!(
                "function {:?}: secrets and configmaps need the container backend (they are files at /secrets and /configs inside the instance); this server runs the {} backend",
                f.name,
                self.isolation().backend
            )));
        }
        for kind in [DataKind::Secret, DataKind::ConfigMap] {
            for r in kind.refs(f) {
                if self
                    .data_store()
                    .record(kind, &r.namespace, &r.name)?
                    .is_none()
                {
                    return Err(Error::Conflict(format!(
                        "function {:?}: {} {}/{} does not exist; create it first",
                        f.name,
                        kind.noun(),
                        r.namespace,
                        r.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The files an instance of `f` gets: `secrets/<ns>/<name>/<key>` and
    /// `configs/<ns>/<name>/<key>`, values opened.
    pub(crate) fn files_for(&self, f: &Function) -> Result<Vec<StagedFile>> {
        let mut files = Vec::new();
        for kind in [DataKind::Secret, DataKind::ConfigMap] {
            for r in kind.refs(f) {
                let record = self
                    .data_store()
                    .record(kind, &r.namespace, &r.name)?
                    .ok_or_else(|| {
                        Error::Conflict(format!(
                            "function {:?}: {} {}/{} does not exist",
                            f.name,
                            kind.noun(),
                            r.namespace,
                            r.name
                        ))
                    })?;
                for (key, value) in self.data_store().values(kind, &record)? {
                    files.push(StagedFile {
                        path: Path::new(kind.dir())
                            .join(&r.namespace)
                            .join(&r.name)
                            .join(key),
                        contents: value.into_bytes(),
                    });
                }
            }
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> (tempfile::TempDir, Sealer) {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::load_or_create(&dir.path().join("secrets.key")).unwrap();
        (dir, s)
    }

    #[test]
    fn sealed_values_open_again_and_hide_the_plaintext() {
        let (_dir, s) = sealer();
        let sealed = s.seal(b"fusion/secret/default/s", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            s.open(b"fusion/secret/default/s", &sealed).unwrap(),
            b"hunter2"
        );
        // A fresh nonce per write: the same value seals differently each time.
        let again = s.seal(b"fusion/secret/default/s", b"hunter2").unwrap();
        assert_ne!(sealed, again);
    }

    #[test]
    fn a_tampered_or_moved_value_does_not_open() {
        let (_dir, s) = sealer();
        let sealed = s.seal(b"fusion/secret/default/s", b"hunter2").unwrap();
        for i in [0, NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(matches!(
                s.open(b"fusion/secret/default/s", &bad),
                Err(SealError::Tampered)
            ));
        }
        // Bound to its record: the same bytes under another name do not open.
        assert!(matches!(
            s.open(b"fusion/secret/default/other", &sealed),
            Err(SealError::Tampered)
        ));
        assert!(matches!(
            s.open(b"fusion/secret/default/s", &sealed[..10]),
            Err(SealError::Truncated)
        ));
        // Nor under another key.
        let (_other_dir, other) = sealer();
        assert!(other.open(b"fusion/secret/default/s", &sealed).is_err());
    }

    #[test]
    fn the_key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let first = Sealer::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = first.seal(b"a", b"value").unwrap();
        let again = Sealer::load_or_create(&path).unwrap();
        assert_eq!(again.open(b"a", &sealed).unwrap(), b"value");
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            Sealer::load_or_create(&path),
            Err(KeyError::Invalid(_))
        ));
    }

    #[test]
    fn keys_are_file_names() {
        for good in ["password", "tls.crt", "a-b_c.d", ".hidden", "x"] {
            assert!(validate_key(DataKind::Secret, good).is_ok(), "{good}");
        }
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a b",
            "é",
            "a\0",
            long.as_str(),
        ] {
            assert!(validate_key(DataKind::Secret, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_spec_takes_its_namespace_from_the_body_or_the_query() {
        let spec = |ns: Option<&str>| DataSpec {
            name: "s".into(),
            namespace: ns.map(str::to_string),
            data: BTreeMap::from([("k".to_string(), "v".to_string())]),
        };
        assert_eq!(
            check(DataKind::Secret, spec(None), None).unwrap().namespace,
            "default"
        );
        assert_eq!(
            check(DataKind::Secret, spec(None), Some("team"))
                .unwrap()
                .namespace,
            "team"
        );
        assert!(check(DataKind::Secret, spec(Some("a")), Some("b")).is_err());
        let mut big = spec(None);
        big.data.insert("big".into(), "x".repeat(MAX_DATA_BYTES));
        assert!(matches!(
            check(DataKind::ConfigMap, big, None),
            Err(Error::TooLarge(_))
        ));
        // Debug never shows a value.
        let shown = format!("{:?}", spec(None));
        assert!(
            shown.contains("\"k\"") && !shown.contains("\"v\""),
            "{shown}"
        );
    }
}
