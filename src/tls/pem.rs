//! Certificates and keys from PEM files: a chain (leaf first) and its
//! private key (PKCS#8, PKCS#1 RSA or SEC1 EC; RSA, ECDSA or Ed25519),
//! checked to belong together, and what the leaf says of itself — its
//! names, for choosing it by SNI, its subject and expiry, for the metrics.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{provider, Files, TlsError};
use crate::config::CertFiles;

/// What a leaf certificate says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    /// The subject, as `CN=..., O=...`.
    pub subject: String,
    /// DNS names it covers, lowercased; `*.suffix` wildcards kept as written.
    pub names: Vec<String>,
    /// Not valid after this, in seconds since the Unix epoch.
    pub not_after: i64,
}

/// The chain of `files.cert` with the key of `files.key`.
pub(super) fn certified_key(
    files: &CertFiles,
    read: &mut Files,
) -> Result<(Arc<CertifiedKey>, CertInfo), TlsError> {
    let chain = chain(&files.cert, "cert", read)?;
    let info = info(&chain[0]).map_err(|why| TlsError::new("cert", &files.cert, why))?;
    let key_bytes = read.read("key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        TlsError::new(
            "key",
            &files.key,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}"),
        )
    })?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        TlsError::new(
            "key",
            &files.key,
            format!("cannot be used with {}: {e}", files.cert.display()),
        )
    })?;
    Ok((Arc::new(key), info))
}

/// Every certificate of a PEM file, in order; at least one.
pub(super) fn chain(
    path: &Path,
    what: &str,
    read: &mut Files,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read.read(what, path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(what, path, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::new(what, path, "holds no PEM certificate"));
    }
    Ok(chain)
}

fn info(leaf: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| format!("its first certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        // No SAN: the common name is what old certificates name.
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}
