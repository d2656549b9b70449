//! Errors of a pull. Each names the reference and, where one was involved, the URL or digest.

use crate::digest::Digest;
use crate::manifest::{ManifestError, Platform};
use crate::reference::Reference;
use crate::store::StoreError;

/// Why a pull failed. The store is left consistent: a failed pull records no image, and any
/// partial download stays in the store's `tmp/` only until the writer is dropped.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry could not be reached or the connection failed, after retries.
    #[error("pull {reference}: request to {url} failed: {source}")]
    Http {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// Nothing arrived for the configured stall timeout.
    #[error("pull {reference}: no progress from {url} for {secs} s")]
    Timeout {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The URL that stalled.
        url: String,
        /// The stall timeout in seconds.
        secs: u64,
    },
    /// The registry refused our credentials (or we had none): 401 or 403.
    #[error("pull {reference}: {url} answered {status}: unauthorized{}", if *has_credentials { " (credentials rejected)" } else { " (no credentials configured for this registry)" })]
    Unauthorized {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// Whether credentials were sent.
        has_credentials: bool,
    },
    /// The repository, tag, manifest or blob does not exist (404).
    #[error("pull {reference}: not found: {url}")]
    NotFound {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The URL answered 404.
        url: String,
    },
    /// The registry kept answering with a server error (5xx or 429) until retries ran out.
    #[error("pull {reference}: {url} answered {status} after {attempts} attempts")]
    Server {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The URL.
        url: String,
        /// The last status.
        status: u16,
        /// Attempts made.
        attempts: u32,
    },
    /// The registry answered with a status this client does not expect.
    #[error("pull {reference}: {url} answered unexpected status {status}")]
    UnexpectedStatus {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// A `WWW-Authenticate` challenge this client cannot answer, or a token endpoint failure.
    #[error("pull {reference}: authentication at {url} failed: {reason}")]
    Auth {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The registry or token URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A manifest or blob does not hash to its digest. Nothing was stored.
    #[error("pull {reference}: content of {url} has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The URL.
        url: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// The connection ended before the whole blob arrived, also after retries.
    #[error("pull {reference}: download of {digest} from {url} truncated at {received} of {expected} bytes")]
    Truncated {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The URL.
        url: String,
        /// The blob.
        digest: Digest,
        /// Bytes expected (the descriptor's size).
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// More bytes arrived than the descriptor's size.
    #[error("pull {reference}: {url} sent more than the {expected} bytes of {digest}")]
    TooLarge {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The URL.
        url: String,
        /// The blob.
        digest: Digest,
        /// Bytes expected.
        expected: u64,
    },
    /// A manifest (or one of its layers) has an unknown media type or does not parse.
    #[error("pull {reference}: manifest from {url}: {source}")]
    Manifest {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The URL.
        url: String,
        /// What was wrong.
        source: ManifestError,
    },
    /// The image exists only for other platforms.
    #[error("pull {reference}: no image for {wanted} (available: {})", available.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    PlatformMismatch {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The platform asked for.
        wanted: Platform,
        /// What the registry offers.
        available: Vec<Platform>,
    },
    /// Reading the Docker `config.json` failed.
    #[error("credentials file {path}: {reason}")]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Building the HTTP client failed.
    #[error("building the HTTP client: {0}")]
    Client(reqwest::Error),
    /// The store failed.
    #[error("pull {reference}: {source}")]
    Store {
        /// The image being pulled.
        reference: Box<Reference>,
        /// The store error.
        source: StoreError,
    },
}
