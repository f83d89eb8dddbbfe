//! HTTPS on the listening port: the certificate chain and private key named by `tls_cert` and
//! `tls_key`, served with rustls (the ring provider), offering HTTP/2 and HTTP/1.1 by ALPN.
//!
//! The pair is re-read without a restart: on SIGHUP, and when either file's modification time
//! changes (checked every [`RELOAD_POLL`]). A pair that does not load (a file that
//! cannot be read, no PEM certificate or key in it, a key that does not match the certificate)
//! is logged as a warning and the previous pair keeps serving. New connections get the new
//! certificate; open ones keep the one they were made with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often the certificate and key files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// ALPN protocols offered, in the server's order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The two files of the TLS configuration (`tls_cert`, `tls_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Which of the two files a load failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
}

impl TlsFile {
    /// The configuration key naming this file.
    pub fn key(self) -> &'static str {
        match self {
            TlsFile::Cert => "tls_cert",
            TlsFile::Key => "tls_key",
        }
    }
}

/// Why a certificate and key could not be loaded. Never holds key material.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{}`: {message}", file.key())]
pub struct LoadError {
    pub file: TlsFile,
    pub message: String,
}

fn fail(file: TlsFile, message: impl Into<String>) -> LoadError {
    LoadError { file, message: message.into() }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the pair: a certificate chain, a private key, and that the key belongs to
/// the first certificate.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, LoadError> {
    let read = |file: TlsFile, path: &Path| {
        std::fs::read(path).map_err(|e| fail(file, format!("cannot read {}: {e}", path.display())))
    };
    let cert_pem = read(TlsFile::Cert, &files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(TlsFile::Cert, format!("{}: bad PEM: {e}", files.cert.display())))?;
    if chain.is_empty() {
        return Err(fail(
            TlsFile::Cert,
            format!("{} holds no PEM certificate (BEGIN CERTIFICATE)", files.cert.display()),
        ));
    }
    let key_pem = read(TlsFile::Key, &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        fail(
            TlsFile::Key,
            format!("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}", files.key.display()),
        )
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => fail(
            TlsFile::Key,
            format!("{} does not match the certificate in {}", files.key.display(), files.cert.display()),
        ),
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            fail(TlsFile::Cert, format!("{}: {e}", files.cert.display()))
        }
        other => fail(TlsFile::Key, format!("{}: {other}", files.key.display())),
    })
}

/// The certificate handed to each new handshake.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("certificate lock").clone())
    }
}

/// The TLS side of the listener: the acceptor and the certificate it serves, replaceable.
pub struct Tls {
    files: TlsFiles,
    current: Arc<Current>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Tls {
    /// Loads the pair and builds the server configuration (TLS 1.2 and 1.3, no client
    /// certificates, ALPN `h2` then `http/1.1`).
    pub fn new(files: TlsFiles) -> Result<Tls, LoadError> {
        let current = Arc::new(Current(RwLock::new(Arc::new(load(&files)?))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Tls { files, current, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads the files again; on success new handshakes use the new pair, on failure nothing
    /// changes.
    pub fn reload(&self) -> Result<(), LoadError> {
        let key = load(&self.files)?;
        *self.current.0.write().expect("certificate lock") = Arc::new(key);
        Ok(())
    }

    /// Starts reloading on SIGHUP and on changes of the files. SIGHUP is taken over before this
    /// returns, so from then on it no longer ends the process.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        #[cfg(unix)]
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the TLS files are still watched");
                None
            }
        };
        let tls = self.clone();
        tokio::spawn(async move {
            let stamps = |tls: &Arc<Tls>| {
                let tls = tls.clone();
                tokio::task::spawn_blocking(move || (stamp(&tls.files.cert), stamp(&tls.files.key)))
            };
            let mut seen = stamps(&tls).await.ok();
            let mut tick = tokio::time::interval(RELOAD_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let hup = async {
                    match hangup.as_mut() {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hup = std::future::pending::<Option<()>>();
                let reason = tokio::select! {
                    _ = tick.tick() => {
                        let now = stamps(&tls).await.ok();
                        if now == seen {
                            continue;
                        }
                        seen = now;
                        "the files changed"
                    }
                    Some(()) = hup => {
                        seen = stamps(&tls).await.ok();
                        "SIGHUP"
                    }
                };
                let reloading = tls.clone();
                match tokio::task::spawn_blocking(move || reloading.reload()).await {
                    Ok(Ok(())) => {
                        herald_core::metrics::metrics().tls_reloaded(true);
                        tracing::info!(reason, "TLS certificate reloaded")
                    }
                    Ok(Err(e)) => {
                        herald_core::metrics::metrics().tls_reloaded(false);
                        tracing::warn!(reason, error = %e, "TLS certificate not reloaded; the previous one stays in use")
                    }
                    Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
                }
            }
        })
    }
}

/// What tells that a file was replaced or rewritten: its modification time (following
/// symbolic links, so a Kubernetes Secret's swapped `..data` link counts too).
fn stamp(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}
