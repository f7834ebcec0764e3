//! The API's bearer token: generated at the server's first start into a file only
//! its owner can read (`<data-dir>/token`, mode 0600 from the moment it exists),
//! reused on later starts, compared in constant time; and where the CLI looks for
//! it (`FUSION_TOKEN`, else the file `FUSION_TOKEN_FILE` names, else
//! `<FUSION_DATA_DIR or .fusion>/token`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// Shortest token accepted from a file a user wrote.
const MIN_LEN: usize = 32;

/// Why the server cannot use its token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot read the API token file {path}: {source}{}",
        owner_hint(path, source)
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot create the API token file {path}: {source}{}",
        owner_hint(path, source)
    )]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a random API token: {0}")]
    Random(getrandom::Error),
    #[error(
        "the API token file {0} must hold one token of at least {MIN_LEN} visible ASCII characters"
    )]
    Invalid(PathBuf),
}

/// The server's API token. `Debug` does not show it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token at `path`, or, when there is no file, generates one (32
    /// random bytes, hex) and writes it there, created with mode 0600.
    pub fn load_or_create(path: &Path) -> Result<Token, TokenError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(TokenError::Random)?;
        let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        // Written whole to a private temporary file first, then linked into
        // place (which, like create_new, never replaces a token already there):
        // a crash cannot leave an empty token file behind.
        if path.exists() {
            return Token::load(path);
        }
        match pool_manager::private_file::create_new(path, &fresh) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated the API token");
                Ok(Token(fresh.into()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Token::load(path),
            Err(source) => Err(TokenError::Create {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Reads an existing token file; warns when others may read it.
    fn load(path: &Path) -> Result<Token, TokenError> {
        let read_err = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if others_may_read(meta.mode(), meta.gid()) {
            tracing::warn!(
                path = %path.display(),
                "the API token file is readable by other users; chmod 600 it"
            );
        }
        let token = text.trim();
        if token.len() < MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Invalid(path.to_path_buf()));
        }
        Ok(Token(token.into()))
    }

    /// Whether `candidate` is this token, in time that does not depend on where
    /// they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(candidate).into()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the CLI finds the token: `FUSION_TOKEN`, else the file
/// `FUSION_TOKEN_FILE` names, else the file `token` in `FUSION_DATA_DIR`
/// (default `.fusion`, as the server's). None when none has one.
pub fn for_cli() -> Option<String> {
    if let Ok(t) = std::env::var("FUSION_TOKEN") {
        let t = t.trim();
        if !t.is_empty() {
            return Some(t.to_string());
        }
    }
    // The file the server was told (`--token-file`, `FUSION_TOKEN_FILE`),
    // else the one in its data directory.
    let file = match std::env::var_os("FUSION_TOKEN_FILE").filter(|f| !f.is_empty()) {
        Some(f) => PathBuf::from(f),
        None => std::env::var_os("FUSION_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".fusion"))
            .join("token"),
    };
    let text = std::fs::read_to_string(file).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// What a permission error on `path` comes from when the file (or, where it
/// cannot be seen, the nearest directory above it that can) belongs to
/// another user than the server's: a data dir made by root and a server run
/// as a service user, say. Empty for other errors.
fn owner_hint(path: &Path, error: &std::io::Error) -> String {
    if error.kind() != std::io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let Some(me) = std::fs::metadata("/proc/self").ok().map(|m| m.uid()) else {
        return String::new();
    };
    let Some((seen, meta)) = path
        .ancestors()
        .find_map(|p| std::fs::metadata(p).ok().map(|m| (p, m)))
    else {
        return String::new();
    };
    if meta.uid() == me {
        return String::new();
    }
    format!(
        " ({} belongs to uid {}, the server runs as uid {me}: chown the data dir to the server's user, or run the server as its owner)",
        seen.display(),
        meta.uid()
    )
}

/// Whether a file of `mode` and group `gid` is readable by anyone but the
/// server: by all, or by a group that is not the server's own (a Kubernetes
/// secret volume gives its files to the pod's `fsGroup`, the server's group).
fn others_may_read(mode: u32, gid: u32) -> bool {
    mode & 0o007 != 0 || (mode & 0o070 != 0 && Some(gid) != own_gid())
}

/// The server's effective group: that of its own `/proc/self`.
fn own_gid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.gid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_generated_token_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let first = Token::load_or_create(&path).unwrap();
        assert_eq!(first.as_str().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Token::load_or_create(&path).unwrap();
        assert_eq!(first.as_str(), again.as_str());
        assert!(first.matches(again.as_str().as_bytes()));
        assert!(!first.matches(b"wrong"));
        assert!(!first.matches(&again.as_str().as_bytes()[1..]));
    }

    #[test]
    fn a_short_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            Token::load_or_create(&path),
            Err(TokenError::Invalid(_))
        ));
    }

    /// A data dir another user owns (made by root, the server run as a
    /// service user) is named with both users in the error.
    #[test]
    fn a_permission_error_names_the_owner_when_it_is_not_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(owner_hint(&path, &denied()), "", "the server's own dir");
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        let other = me + 4242;
        if std::os::unix::fs::chown(dir.path(), Some(other), None).is_err() {
            eprintln!("skipped: cannot chown here (not root)");
            return;
        }
        let error = TokenError::Create {
            path: path.clone(),
            source: denied(),
        }
        .to_string();
        assert!(
            error.contains(&format!(
                "{} belongs to uid {other}, the server runs as uid {me}",
                dir.path().display()
            )),
            "{error}"
        );
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(owner_hint(&path, &missing), "", "not a permission error");
    }

    #[test]
    fn a_token_readable_by_the_server_s_own_group_is_not_shared() {
        let own = own_gid().unwrap();
        assert!(!others_may_read(0o600, own + 1));
        // A secret volume's file: group-readable by the pod's fsGroup, the server's.
        assert!(!others_may_read(0o440, own));
        assert!(others_may_read(0o440, own + 1));
        assert!(others_may_read(0o604, own));
    }
}
