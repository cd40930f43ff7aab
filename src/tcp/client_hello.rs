//! ClientHello server name (placeholder until the parser lands).

pub enum Hello<'a> {
    Partial,
    Complete { server_name: Option<&'a str> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not TLS")]
    NotTls,
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

pub fn parse(_buf: &[u8]) -> Result<Hello<'_>, HelloError> {
    Err(HelloError::NotTls)
}
