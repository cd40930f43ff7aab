//! TLS to a pool's endpoints: a client configuration per pool, which
//! verifies the endpoints' certificates against the pool's `ca_file` or the
//! system's roots (never skipped unless `insecure_skip_verify = true` is
//! written out), offers the ALPN protocol the pool speaks, and presents a
//! client certificate when the pool has one; and what one endpoint's
//! connections need of it (`EndpointTls`): that configuration and the
//! server name the endpoint is asked for and verified against.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::{Arc, OnceLock};

use http::uri::Authority;
use http::HeaderValue;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::pem::{certified_key, chain};
use super::{provider, Files, TlsError};
use crate::config::{PoolTls, UpstreamProtocol};

/// A pool's client configuration, with what tells it from one read from
/// other settings or other file bytes.
#[derive(Clone)]
pub(crate) struct PoolClient {
    pub config: Arc<ClientConfig>,
    /// The same for the same settings, protocol and file bytes: a reload
    /// that changes none of them keeps the pool's connections.
    pub identity: u64,
}

impl PoolClient {
    /// `tls` of a pool speaking `protocol`, whose files `read` holds.
    pub(super) fn new(
        config: Arc<ClientConfig>,
        tls: &PoolTls,
        protocol: UpstreamProtocol,
        read: &Files,
    ) -> Self {
        let mut hasher = DefaultHasher::new();
        tls.hash(&mut hasher);
        protocol.hash(&mut hasher);
        let files = tls.client_cert.iter().flat_map(|c| [&c.cert, &c.key]);
        for path in tls.ca_file.iter().chain(files) {
            read.read.get(path).hash(&mut hasher);
        }
        Self {
            config,
            identity: hasher.finish(),
        }
    }
}

/// TLS to one endpoint: the pool's configuration and the name it is
/// verified against.
#[derive(Clone)]
pub(crate) struct EndpointTls {
    config: Arc<ClientConfig>,
    identity: u64,
    name: ServerName<'static>,
}

impl EndpointTls {
    /// For an endpoint at `endpoint` of a pool with `client`, whose `sni`
    /// and Host rewrite are given: the name is `sni`, else the rewrite
    /// (without a port), else the endpoint's host (an IP address as one).
    pub fn new(
        client: &PoolClient,
        sni: Option<&str>,
        rewrite: Option<&HeaderValue>,
        endpoint: &Authority,
    ) -> Self {
        let rewrite = rewrite
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<Authority>().ok());
        let name = [sni, rewrite.as_ref().map(Authority::host)]
            .into_iter()
            .flatten()
            .chain([endpoint.host()])
            .find_map(server_name)
            // The endpoint's host was validated as a DNS name or an IP
            // address; this is never reached.
            .unwrap_or_else(|| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()));
        Self {
            config: client.config.clone(),
            identity: client.identity,
            name,
        }
    }

    /// Equal for the same settings and files and the same name, so
    /// connection sets and checkers keyed by it survive a reload that
    /// changes neither.
    pub fn identity(&self) -> TlsIdentity {
        TlsIdentity {
            files: self.identity,
            name: self.name.clone(),
        }
    }

    /// The TLS handshake over `tcp`; its error says what failed ("invalid
    /// peer certificate: UnknownIssuer").
    pub async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
    }
}

/// What tells one endpoint's TLS from another's (see `EndpointTls::identity`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TlsIdentity {
    files: u64,
    name: ServerName<'static>,
}

/// A host as a server name: a DNS name, or an IP address (bracketed for v6).
fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

impl std::fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The client configuration of a pool with `tls`, speaking `protocol`.
pub(super) fn config(
    tls: &PoolTls,
    protocol: UpstreamProtocol,
    read: &mut Files,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("tls", std::path::Path::new(""), e.to_string()))?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
    } else {
        let roots = match &tls.ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in chain(path, "tls ca_file", read)? {
                    roots.add(cert).map_err(|e| {
                        TlsError::new("tls ca_file", path, format!("not a usable CA: {e}"))
                    })?;
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match &tls.client_cert {
        Some(files) => {
            let (key, _) = certified_key(files, read).map_err(|e| e.within("tls"))?;
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![match protocol {
        UpstreamProtocol::Http1 => b"http/1.1".to_vec(),
        UpstreamProtocol::H2 => b"h2".to_vec(),
    }];
    Ok(Arc::new(config))
}

/// The system's trusted roots, read once; empty (so every verification
/// fails, and says why) when the system has none. Shared with the
/// webhook sender (`audit::webhook`).
pub(crate) fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "while reading the system's CA certificates");
            }
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates found: pools without ca_file cannot verify their endpoints");
            }
            Arc::new(roots)
        })
        .clone()
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake's
/// signatures are still checked, so the session is at least with the
/// holder of the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
