//! TLS for Cairn's HTTP servers (the agent's API, the master's APIs) and their clients, with
//! rustls (ring), shared so that both daemons read their settings the same way.
//!
//! - Servers: the certificate chain and key from `tls_cert`/`tls_key` (PEM,
//!   [`server_config`]). [`TlsListener`] is an [`axum::serve::Listener`], so the same router
//!   and graceful shutdown serve HTTP or HTTPS. Handshakes run in their own tasks, each
//!   bounded by [`HANDSHAKE_TIMEOUT`], so a client that connects and says nothing holds up no
//!   one else; failed handshakes are logged and dropped.
//! - Clients: [`ca_bundle`] reads the PEM certificates a client trusts for the master
//!   (`master_ca`); without one, clients trust the webpki roots their HTTP library ships.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use rustls;
use rustls::pki_types::pem::PemObject;
pub use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS settings cannot be used; names the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid setting `tls_cert`: {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("invalid setting `tls_key`: {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("invalid settings `tls_cert` and `tls_key` ({cert} and {key}): {message}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("invalid setting `{key}`: {path}: {message}")]
    Ca {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// The certificates of the PEM bundle at `path`, the setting `key` (`master_ca`), to trust
/// as roots.
///
/// # Errors
/// The file is unreadable, is not PEM, or holds no certificate; the error names `key`.
pub fn ca_bundle(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Ca {
        key,
        path: path.to_path_buf(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Reads the PEM chain and key and builds the server config (HTTP/1.1 over TLS).
///
/// # Errors
/// A file is unreadable or holds no certificate / private key, or the key does not match
/// the certificate; the error names the setting.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| TlsError::Pair {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            message: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands out those whose TLS handshake completed.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS on `listener` with `config`. Call inside a tokio runtime.
    ///
    /// # Errors
    /// The listener has no local address.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let tls = TlsAcceptor::from(config);
        let acceptor = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait instead of spinning.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Event streams write many small chunks: do not let Nagle's algorithm hold
                // each one for the previous one's delayed acknowledgement.
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
                }
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The acceptor task ended (only when aborted): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_name_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a pem file\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &garbage).unwrap_err();
        assert!(e.to_string().contains("`tls_cert`"), "{e}");
        let e = server_config(&garbage, &garbage).unwrap_err();
        assert!(e.to_string().contains("`tls_cert`"), "{e}");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn bad_ca_bundles_name_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a pem file\n").unwrap();
        let e = ca_bundle("master_ca", &garbage).unwrap_err().to_string();
        assert!(
            e.contains("`master_ca`") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = ca_bundle("master_ca", &dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`master_ca`") && e.contains("missing.pem"),
            "{e}"
        );
    }
}
