//! TLS, both ways: terminated on http listeners (`server`: certificates
//! chosen by SNI, ALPN, the handshake under a deadline) and spoken to a
//! pool's endpoints (`client`: verified against a CA file or the system's
//! roots, optionally with a client certificate). Everything read from
//! files — chains, keys, CA bundles — is read here, when a configuration is
//! loaded, into one `Material`: the server builds snapshots from it, and a
//! change of any of its files reloads like a change of the configuration,
//! so a broken new pair is refused and the old one keeps serving.

pub(crate) mod client;
mod pem;
pub(crate) mod server;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

use crate::config::Config;
pub(crate) use server::ListenerTls;

/// The one crypto provider: aws-lc-rs (see Cargo.toml for the figures).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// A TLS file that cannot be used, with why.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {why}")]
pub struct TlsError {
    /// Which setting names the file: "listener \"web\" cert", "pool ...".
    what: String,
    path: PathBuf,
    why: String,
}

impl TlsError {
    fn new(what: &str, path: &Path, why: impl Into<String>) -> Self {
        Self {
            what: what.to_owned(),
            path: path.to_path_buf(),
            why: why.into(),
        }
    }
}

/// Every problem with the TLS files of one configuration.
#[derive(Debug, thiserror::Error)]
#[error("{}", lines(&self.errors))]
pub struct TlsErrors {
    pub errors: Vec<TlsError>,
    /// The files read, as for `Material`.
    files: Fingerprint,
}

impl TlsErrors {
    /// What the failed load read.
    pub(crate) fn fingerprint(&self) -> &Fingerprint {
        &self.files
    }
}

fn lines(errors: &[TlsError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The bytes of every TLS file one load read, by path: two loads that read
/// the same bytes made the same `Material` (or failed alike).
pub(crate) type Fingerprint = BTreeMap<PathBuf, Vec<u8>>;

/// What the TLS settings of one configuration read from files, ready to use.
#[derive(Default)]
pub struct Material {
    /// Terminating listeners, by configured bind address.
    pub(crate) listeners: HashMap<SocketAddr, Arc<ListenerTls>>,
    /// Pools that speak TLS to their endpoints, by service and pool name.
    pub(crate) pools: HashMap<(String, String), client::PoolClient>,
    /// The admin API's, when it serves HTTPS.
    pub(crate) admin: Option<Arc<rustls::ServerConfig>>,
    /// The bytes of every file read, to tell a changed file from an
    /// unchanged one.
    files: Fingerprint,
}

impl Material {
    /// Reads and checks every TLS file `config` names: each must exist,
    /// parse, and (for a pair) have a key that matches its certificate.
    pub fn load(config: &Config) -> Result<Self, TlsErrors> {
        let mut files = Files::default();
        let mut errors = Vec::new();
        let mut material = Self::default();
        for listener in &config.listeners {
            let Some(tls) = &listener.tls else { continue };
            let what = format!("listener {:?}", listener.name);
            match server::ListenerTls::load(&listener.name, tls, &mut files) {
                Ok(loaded) => {
                    material.listeners.insert(listener.bind, Arc::new(loaded));
                }
                Err(e) => errors.push(e.within(&what)),
            }
        }
        for service in &config.services {
            for pool in &service.pools {
                let Some(tls) = &pool.tls else { continue };
                let what = format!("pool {:?} of service {:?}", pool.name, service.name);
                match client::config(tls, pool.protocol, &mut files) {
                    Ok(loaded) => {
                        let client = client::PoolClient::new(loaded, tls, pool.protocol, &files);
                        material
                            .pools
                            .insert((service.name.clone(), pool.name.clone()), client);
                    }
                    Err(e) => errors.push(e.within(&what)),
                }
            }
        }
        if let Some(tls) = &config.admin.tls {
            match server::admin_config(tls, &mut files) {
                Ok(loaded) => material.admin = Some(loaded),
                Err(e) => errors.push(e.within("[admin]")),
            }
        }
        if !errors.is_empty() {
            return Err(TlsErrors {
                errors,
                files: files.read,
            });
        }
        material.files = files.read;
        Ok(material)
    }

    /// Warns of every pool of `config` that skips verification: called when
    /// a configuration is put in force, not at every load, so a reload that
    /// changes nothing logs nothing (and a log file beside the configuration
    /// cannot set off another reload).
    pub(crate) fn warn_unverified(config: &Config) {
        for service in &config.services {
            for pool in &service.pools {
                if pool.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
                    tracing::warn!(service = %service.name, pool = %pool.name,
                        "insecure_skip_verify = true: the endpoints' certificates are not verified");
                }
            }
        }
    }

    /// What this load read.
    pub(crate) fn fingerprint(&self) -> &Fingerprint {
        &self.files
    }

    /// The directories of every file read: where a change means a reload.
    /// Directories, not files, so a Secret volume's symlink swap is seen.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .files
            .keys()
            .map(|file| match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// Files read while loading, kept by path.
#[derive(Default)]
struct Files {
    read: Fingerprint,
}

impl Files {
    /// The bytes of `path`; `what` names the setting in the error.
    fn read(&mut self, what: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
        let bytes = std::fs::read(path)
            .map_err(|e| TlsError::new(what, path, format!("cannot read it: {e}")))?;
        self.read.insert(path.to_path_buf(), bytes.clone());
        Ok(bytes)
    }
}

impl TlsError {
    /// Prefixes the setting's place: `listener "web"` and the like.
    fn within(mut self, place: &str) -> Self {
        self.what = format!("{place} {}", self.what);
        self
    }
}
