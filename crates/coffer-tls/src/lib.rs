//! TLS of Coffer's outgoing connections: `https://` JSON-RPC and OTLP endpoints, `amqps://`.
//!
//! One choice for every client (docs/dependencies.md): rustls with the `ring` provider (never
//! aws-lc or OpenSSL), server certificates verified against the platform's trust store (the
//! image's `/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`, read by
//! rustls-platform-verifier), plus the CA certificates of an optional PEM file
//! (`COFFER_TLS_CA_FILE`) for a private CA.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use thiserror::Error;

pub use reqwest013 as reqwest;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading the CA file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the CA file {origin} holds no PEM certificate")]
    NoCertificate { origin: String },
    #[error("the CA file {origin}: certificate {index} is not valid: {detail}")]
    BadCertificate {
        origin: String,
        index: usize,
        detail: String,
    },
    #[error("building the HTTPS client: {0}")]
    Client(String),
}

/// Installs `ring` as the process's rustls provider (once; later calls do nothing). Clients that
/// take the process default (reqwest 0.13 without a provider feature) need it before they are
/// built; every constructor of this crate calls it.
pub fn install_ring_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing the same provider is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The certificates a client trusts: the platform's, plus extra CAs.
#[derive(Clone, Debug, Default)]
pub struct TlsRoots {
    /// The extra CAs as PEM text (lapin takes PEM) and their DER (reqwest takes certificates).
    extra_pem: Option<String>,
    extra_der: Vec<CertificateDer<'static>>,
}

impl TlsRoots {
    /// The platform's trust store only.
    pub fn platform() -> TlsRoots {
        install_ring_provider();
        TlsRoots::default()
    }

    /// The platform's trust store plus the CA certificates of `path` (PEM), when given.
    pub fn load(path: Option<&Path>) -> Result<TlsRoots, TlsError> {
        let Some(path) = path else {
            return Ok(TlsRoots::platform());
        };
        let text = std::fs::read_to_string(path).map_err(|error| TlsError::Read {
            path: path.display().to_string(),
            error,
        })?;
        TlsRoots::with_extra_pem(&text, &path.display().to_string())
    }

    /// The platform's trust store plus the CA certificates of `pem`; `origin` names it in errors.
    /// Every certificate must parse as a trust anchor: a broken file is refused at start, not at
    /// the first connection.
    pub fn with_extra_pem(pem: &str, origin: &str) -> Result<TlsRoots, TlsError> {
        install_ring_provider();
        let mut extra_der = Vec::new();
        for (index, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
            let cert = cert.map_err(|e| TlsError::BadCertificate {
                origin: origin.to_string(),
                index,
                detail: e.to_string(),
            })?;
            let mut probe = rustls::RootCertStore::empty();
            probe.add(cert.clone()).map_err(|e| TlsError::BadCertificate {
                origin: origin.to_string(),
                index,
                detail: e.to_string(),
            })?;
            extra_der.push(cert);
        }
        if extra_der.is_empty() {
            return Err(TlsError::NoCertificate {
                origin: origin.to_string(),
            });
        }
        Ok(TlsRoots {
            extra_pem: Some(pem.to_string()),
            extra_der,
        })
    }

    /// The extra CAs as PEM, for clients that take PEM (lapin's `cert_chain`).
    pub fn extra_pem(&self) -> Option<&str> {
        self.extra_pem.as_deref()
    }

    /// How many extra CA certificates are trusted.
    pub fn extra_count(&self) -> usize {
        self.extra_der.len()
    }

    fn extra_certificates(&self) -> Result<Vec<reqwest::Certificate>, TlsError> {
        self.extra_der
            .iter()
            .map(|der| reqwest::Certificate::from_der(der).map_err(|e| TlsError::Client(e.to_string())))
            .collect()
    }

    /// An async HTTP(S) client trusting these roots, each request bounded by `timeout`.
    pub fn http_client(&self, timeout: Duration) -> Result<reqwest::Client, TlsError> {
        install_ring_provider();
        reqwest::Client::builder()
            .tls_backend_rustls()
            .tls_certs_merge(self.extra_certificates()?)
            .timeout(timeout)
            .build()
            .map_err(|e| TlsError::Client(error_chain(&e)))
    }

    /// A blocking HTTP(S) client trusting these roots. Built on a thread of its own: reqwest's
    /// blocking client runs its own runtime and must not be created inside an async one.
    pub fn blocking_http_client(&self, timeout: Duration) -> Result<reqwest::blocking::Client, TlsError> {
        install_ring_provider();
        let certificates = self.extra_certificates()?;
        std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .tls_backend_rustls()
                .tls_certs_merge(certificates)
                .timeout(timeout)
                .build()
                .map_err(|e| TlsError::Client(error_chain(&e)))
        })
        .join()
        .map_err(|_| TlsError::Client("the client-building thread panicked".into()))?
    }
}

/// An error and its sources on one line (reqwest's top-level message hides the cause).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused() {
        let error = TlsRoots::with_extra_pem("not a certificate\n", "ca.pem").unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
        let garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let error = TlsRoots::with_extra_pem(garbled, "ca.pem").unwrap_err();
        assert!(
            matches!(error, TlsError::BadCertificate { index: 0, .. }),
            "{error}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = TlsRoots::load(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn clients_build_with_the_platform_store_and_ring() {
        let roots = TlsRoots::platform();
        roots.http_client(Duration::from_secs(1)).unwrap();
        roots.blocking_http_client(Duration::from_secs(1)).unwrap();
        assert_eq!(roots.extra_count(), 0);
    }
}
