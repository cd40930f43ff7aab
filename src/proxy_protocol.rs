//! PROXY protocol v1/v2 (placeholder until the parser lands).

use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

pub struct Header {
    pub len: usize,
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProxyError {
    #[error("not a PROXY header")]
    NotProxy,
}

pub const MAX_LEN: usize = 536;

pub fn parse(_buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    Err(ProxyError::NotProxy)
}

pub fn looks_like(_buf: &[u8]) -> bool {
    false
}

pub fn write(_version: Version, _source: SocketAddr, _destination: SocketAddr, _out: &mut Vec<u8>) {
}
