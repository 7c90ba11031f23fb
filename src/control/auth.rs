//! Who may use the HTTP API: bearer tokens.
//!
//! Contract: every HTTP request carries `Authorization: Bearer TOKEN`, loopback included (a
//! local unprivileged user can reach a loopback port; the Unix socket, mode 0600, is the
//! only path that trusts the peer by who it is). Two tokens:
//! - the **admin** token grants everything. netd generates 256 random bits at start into
//!   `<run dir>/<topology>.http-token` (mode 0600, removed on exit), unless the operator
//!   names a file with `--http-token-file`;
//! - an optional **metrics** token (`--metrics-token-file`) grants `GET /metrics` only, so a
//!   Prometheus scraper holds no power to change anything.
//!
//! A token file named by the operator must be readable by its owner only (as ssh insists for
//! keys) and hold one token of at least [`MIN_TOKEN_LEN`] printable characters. Tokens are
//! compared in constant time.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// The shortest token accepted from a file: 128 bits written as hex.
pub const MIN_TOKEN_LEN: usize = 32;
/// The longest token accepted (a token is one short line).
const MAX_TOKEN_LEN: usize = 4096;

/// Why a token could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("Cannot read the token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Token file {path} is readable by others (mode {mode:03o}); make it 0600 (chmod 600 {path})"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "Token file {path} must hold one token of {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} printable ASCII characters, without spaces"
    )]
    Malformed { path: PathBuf },
    #[error("Cannot write the token file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot read random bytes for a token")]
    Random(#[source] std::io::Error),
}

/// A secret bearer token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// Make a fresh token: 256 bits from the kernel's random source, as hex.
    pub fn generate() -> Result<Token, AuthError> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(AuthError::Random)?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// Read a token from a file that only its owner may read.
    pub fn read_file(path: &Path) -> Result<Token, AuthError> {
        let read_err = |source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mode = file.metadata().map_err(read_err)?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AuthError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = String::new();
        // One byte more than a token and its newline may take, so an overlong file is refused.
        file.take(MAX_TOKEN_LEN as u64 + 3)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        Token::parse(text.trim_end_matches(['\n', '\r'])).ok_or_else(|| AuthError::Malformed {
            path: path.to_path_buf(),
        })
    }

    /// Accept `text` as a token if it is long enough and printable, without spaces.
    fn parse(text: &str) -> Option<Token> {
        let ok = (MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Token(text.to_string()))
    }

    /// Write the token to a new file at `path`, mode 0600, replacing any older one.
    pub fn write_file(&self, path: &Path) -> Result<(), AuthError> {
        let write_err = |source| AuthError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        // Written beside and renamed over, so a reader never sees half a token, and created
        // 0600 so it is never readable by others, not even for an instant.
        let temporary = path.with_extension("tmp");
        let _ = std::fs::remove_file(&temporary);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(write_err)?;
        file.write_all(format!("{}\n", self.0).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write_err)?;
        std::fs::rename(&temporary, path).map_err(write_err)
    }

    /// Return true when `presented` is this token (constant time in the token's content).
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing: no token, or an unknown one.
    None,
    /// `GET /metrics` only.
    Metrics,
    /// Everything.
    Admin,
}

/// The tokens the HTTP API accepts.
#[derive(Debug, Clone)]
pub struct HttpAuth {
    admin: Token,
    metrics: Option<Token>,
    /// The console's session cookie: made at start, handed out for the admin token.
    session: Token,
}

impl HttpAuth {
    /// Accept `admin` for everything and `metrics`, if any, for `GET /metrics`; make a
    /// fresh session secret for the console's cookie.
    pub fn new(admin: Token, metrics: Option<Token>) -> Result<HttpAuth, AuthError> {
        Ok(HttpAuth {
            admin,
            metrics,
            session: Token::generate()?,
        })
    }

    /// Return true when `presented` is the admin token.
    pub fn is_admin(&self, presented: &str) -> bool {
        self.admin.matches(presented)
    }

    /// Return the session secret a browser gets for the admin token.
    pub fn session(&self) -> &str {
        &self.session.0
    }

    /// Return what a session cookie's value grants.
    pub fn cookie_access(&self, value: Option<&str>) -> Access {
        match value {
            Some(value) if self.session.matches(value) => Access::Admin,
            _ => Access::None,
        }
    }

    /// Return what an `Authorization` header value grants.
    pub fn access(&self, authorization: Option<&str>) -> Access {
        let Some(presented) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return Access::None;
        };
        let presented = presented.trim();
        if self.admin.matches(presented) {
            Access::Admin
        } else if self.metrics.as_ref().is_some_and(|m| m.matches(presented)) {
            Access::Metrics
        } else {
            Access::None
        }
    }
}

/// Return where netd writes the admin token of topology `name` by default: beside its
/// control socket.
pub fn token_path(socket: &Path, name: &str) -> PathBuf {
    socket.with_file_name(format!("{name}.http-token"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netd-auth-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generated_tokens_differ_and_round_trip_through_a_0600_file() {
        let dir = temp_dir("round-trip");
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.0.len(), 64);
        let path = dir.join("t.http-token");
        a.write_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Token::read_file(&path).unwrap(), a);
        b.write_file(&path).unwrap(); // replaces
        assert_eq!(Token::read_file(&path).unwrap(), b);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn token_files_others_can_read_or_too_short_are_refused() {
        let dir = temp_dir("refused");
        let path = dir.join("t");
        std::fs::write(&path, "x".repeat(40)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Token::read_file(&path).unwrap_err();
        assert!(err.to_string().contains("mode 644"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Token::read_file(&path).is_ok());
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            Token::read_file(&path),
            Err(AuthError::Malformed { .. })
        ));
        std::fs::write(&path, format!("{} {}", "a".repeat(20), "b".repeat(20))).unwrap();
        assert!(matches!(
            Token::read_file(&path),
            Err(AuthError::Malformed { .. })
        ));
        let err = Token::read_file(&dir.join("missing")).unwrap_err();
        assert!(
            format!("{:?}", std::error::Error::source(&err)).contains("NotFound"),
            "{err:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn access_needs_the_exact_bearer_token() {
        let admin = Token("a".repeat(32));
        let metrics = Token("m".repeat(32));
        let auth = HttpAuth::new(admin, Some(metrics)).unwrap();
        assert_eq!(auth.access(None), Access::None);
        assert_eq!(auth.access(Some(&"a".repeat(32))), Access::None); // no scheme
        assert_eq!(
            auth.access(Some(&format!("Basic {}", "a".repeat(32)))),
            Access::None
        );
        assert_eq!(
            auth.access(Some(&format!("Bearer {}", "a".repeat(31)))),
            Access::None
        );
        assert_eq!(
            auth.access(Some(&format!("Bearer {}", "a".repeat(33)))),
            Access::None
        );
        assert_eq!(
            auth.access(Some(&format!("Bearer {}", "a".repeat(32)))),
            Access::Admin
        );
        assert_eq!(
            auth.access(Some(&format!("Bearer {}", "m".repeat(32)))),
            Access::Metrics
        );
        assert!(!format!("{auth:?}").contains("aaaa"));
    }
}
