//! HTTPS for the agent's API: the certificate chain and key from `tls_cert`/`tls_key` (PEM),
//! served with rustls; the code is shared with the master in [`cairn_tls`].

pub use cairn_tls::rustls::ServerConfig;
pub use cairn_tls::{server_config, TlsError, TlsListener, HANDSHAKE_TIMEOUT};
