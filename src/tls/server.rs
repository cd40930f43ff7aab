//! TLS terminated on an http listener: the listener's certificates, chosen
//! by the ClientHello's server name (exact name, then a `*.` wildcard, else
//! the first pair), its ALPN protocols and oldest version, session tickets
//! on; and the handshake itself, under the listener's deadline, counted by
//! result, version and protocol.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ProtocolVersion, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::pem::{certified_key, CertInfo};
use super::{provider, Files, TlsError};
use crate::config::{self, Alpn, CertFiles, TlsVersion};
use crate::metrics::ListenerMetrics;

/// One terminating listener's TLS, as loaded.
pub(crate) struct ListenerTls {
    acceptor: TlsAcceptor,
    /// Each certificate's leaf, in the configured order.
    pub certs: Vec<CertInfo>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("certs", &self.certs)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    pub(super) fn load(
        listener: &str,
        tls: &config::ListenerTls,
        read: &mut Files,
    ) -> Result<Self, TlsError> {
        let mut by_name = ByName::default();
        let mut certs = Vec::new();
        for files in &tls.certs {
            let (key, info) = certified_key(files, read)?;
            by_name.add(&key, &info);
            certs.push(info);
        }
        let versions: &[&SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| {
                TlsError::new(
                    "tls",
                    tls.certs[0].cert.as_path(),
                    format!("{listener}: {e}"),
                )
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(by_name));
        config.alpn_protocols = tls.alpn.iter().map(|a| a.id().to_vec()).collect();
        config.ticketer = ticketer();
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certs,
        })
    }

    /// The TLS handshake of a client connection, within `timeout`; counted
    /// either way. `None`: it failed (and was logged at debug level, since
    /// any client can cause it).
    pub(crate) async fn accept<S>(
        &self,
        stream: S,
        timeout: Duration,
        metrics: &ListenerMetrics,
    ) -> Option<Accepted<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let result = tokio::time::timeout(timeout, self.acceptor.accept(stream)).await;
        let counters = metrics.tls.as_deref();
        match result {
            Ok(Ok(stream)) => {
                let (_, conn) = stream.get_ref();
                let alpn = match conn.alpn_protocol() {
                    Some(b"h2") => Some(Alpn::H2),
                    Some(b"http/1.1") => Some(Alpn::Http11),
                    _ => None,
                };
                let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
                if let Some(counters) = counters {
                    counters.succeeded(tls13, alpn);
                }
                Some(Accepted { stream, alpn })
            }
            Ok(Err(e)) => {
                if let Some(counters) = counters {
                    counters.failed();
                }
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                if let Some(counters) = counters {
                    counters.failed();
                }
                tracing::debug!(?timeout, "TLS handshake timed out");
                None
            }
        }
    }
}

/// A client connection past its handshake.
pub(crate) struct Accepted<S> {
    pub stream: TlsStream<S>,
    /// What ALPN chose; `None` when the client offered nothing.
    pub alpn: Option<Alpn>,
}

/// Session ticket keys, shared by every listener and kept across reloads,
/// so a reload does not end resumption; rustls rotates them.
fn ticketer() -> Arc<dyn ProducesTickets> {
    static TICKETER: OnceLock<Arc<dyn ProducesTickets>> = OnceLock::new();
    TICKETER
        .get_or_init(|| {
            rustls::crypto::aws_lc_rs::Ticketer::new().expect("the system's random source works")
        })
        .clone()
}

/// Certificates by the names they cover.
#[derive(Debug, Default)]
struct ByName {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` kept as `example.com`: one label before it.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// The first pair: for a name no certificate covers, or none sent.
    default: Option<Arc<CertifiedKey>>,
}

impl ByName {
    /// Adds a pair under its names; an earlier pair keeps a name it has.
    fn add(&mut self, key: &Arc<CertifiedKey>, info: &CertInfo) {
        self.default.get_or_insert_with(|| key.clone());
        for name in &info.names {
            let (map, name) = match name.strip_prefix("*.") {
                Some(suffix) => (&mut self.wildcard, suffix),
                None => (&mut self.exact, name.as_str()),
            };
            map.entry(name.to_owned()).or_insert_with(|| key.clone());
        }
    }

    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
    }
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands over server names lowercased.
        hello
            .server_name()
            .and_then(|name| self.find(name))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// The admin API's server configuration: one pair, HTTP/1.1.
pub(super) fn admin_config(
    files: &CertFiles,
    read: &mut Files,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (key, _) = certified_key(files, read)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("tls cert", &files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
