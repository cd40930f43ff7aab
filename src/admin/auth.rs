//! The admin API's bearer token: loaded once from `token_file` with the checks
//! an operator needs (present, not empty, not readable by other users), and
//! compared in constant time.

use std::path::{Path, PathBuf};

use http::HeaderValue;
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin token_file {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin token_file {0} is empty")]
    Empty(PathBuf),
    #[error("admin token_file {path} can be read by other users (mode {mode:o}); make it private with chmod 600")]
    Exposed { path: PathBuf, mode: u32 },
}

pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let read_err = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o044 != 0 {
                return Err(TokenError::Exposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty(path.to_path_buf()));
        }
        Ok(Self(token.as_bytes().to_vec()))
    }

    /// Checks an `Authorization` header; the reason when it does not pass.
    pub fn check(&self, header: Option<&HeaderValue>) -> Result<(), &'static str> {
        let Some(value) = header else {
            return Err("this call needs an Authorization: Bearer <token> header");
        };
        let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
            return Err("the Authorization header must be Bearer <token>");
        };
        // `ct_eq` compares in time independent of where the bytes differ; a
        // length mismatch fails without comparing, which reveals only that.
        if bool::from(given.trim_ascii().ct_eq(&self.0)) {
            Ok(())
        } else {
            Err("wrong token")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> Token {
        Token(text.as_bytes().to_vec())
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let t = token("s3cret");
        assert!(t
            .check(Some(&HeaderValue::from_static("Bearer s3cret")))
            .is_ok());
        assert!(t
            .check(Some(&HeaderValue::from_static("Bearer s3creT")))
            .is_err());
        assert!(t
            .check(Some(&HeaderValue::from_static("Bearer s3cret-longer")))
            .is_err());
        assert!(t
            .check(Some(&HeaderValue::from_static("Basic s3cret")))
            .is_err());
        assert!(t.check(None).is_err());
    }
}
