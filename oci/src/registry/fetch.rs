//! One HTTP exchange with a registry: authentication, retries with backoff, the stall
//! timeout; and one blob download with verification and `Range` resume.

use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_RANGE, RANGE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};

use super::auth::{parse_challenge, Challenge, TokenResponse};
use super::{Credential, Progress, ProgressEvent, PullError, Puller};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::store::{BlobWriter, StoreError};

/// What a request is for: errors and auth scopes need it.
pub(super) struct Target<'a> {
    pub reference: &'a Reference,
}

impl Target<'_> {
    fn auth_key(&self) -> String {
        format!(
            "{}/{}",
            self.reference.registry(),
            self.reference.repository()
        )
    }
}

impl Puller {
    /// GETs `url`, answering auth challenges and retrying transient failures (connection
    /// errors, 5xx, 429) with exponential backoff. Returns only 2xx responses.
    pub(super) async fn get(
        &self,
        target: &Target<'_>,
        url: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<Response, PullError> {
        let cfg = &self.inner.config;
        let reference = target.reference;
        let mut attempt = 0;
        let mut challenged = false;
        loop {
            attempt += 1;
            let mut req = self.inner.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(from) = range_from.filter(|f| *f > 0) {
                req = req.header(RANGE, format!("bytes={from}-"));
            }
            if let Some(auth) = self.cached_auth(target) {
                req = req.header(AUTHORIZATION, auth);
            }
            let sent = tokio::time::timeout(cfg.stall_timeout, req.send()).await;
            let resp = match sent {
                Err(_) => return Err(self.timeout(reference, url)),
                Ok(Err(e)) => {
                    if attempt < cfg.max_attempts && is_transient(&e) {
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    return Err(PullError::Http {
                        reference: Box::new(reference.clone()),
                        url: url.to_string(),
                        source: e,
                    });
                }
                Ok(Ok(resp)) => resp,
            };
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            match status {
                StatusCode::UNAUTHORIZED if !challenged => {
                    challenged = true;
                    attempt -= 1;
                    let header = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let auth = self
                        .answer_challenge(target, url, header.as_deref())
                        .await?;
                    self.inner
                        .auth
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(target.auth_key(), auth);
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(PullError::Unauthorized {
                        reference: Box::new(reference.clone()),
                        url: url.to_string(),
                        status: status.as_u16(),
                        has_credentials: self.credential(reference).is_some(),
                    })
                }
                StatusCode::NOT_FOUND => {
                    return Err(PullError::NotFound {
                        reference: Box::new(reference.clone()),
                        url: url.to_string(),
                    })
                }
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    if attempt >= cfg.max_attempts {
                        return Err(PullError::Server {
                            reference: Box::new(reference.clone()),
                            url: url.to_string(),
                            status: s.as_u16(),
                            attempts: attempt,
                        });
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                s => {
                    return Err(PullError::UnexpectedStatus {
                        reference: Box::new(reference.clone()),
                        url: url.to_string(),
                        status: s.as_u16(),
                    })
                }
            }
        }
    }

    fn cached_auth(&self, target: &Target<'_>) -> Option<HeaderValue> {
        let map = self
            .inner
            .auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&target.auth_key())
            .and_then(|s| HeaderValue::from_str(s).ok())
    }

    /// The `Authorization` value that answers the challenge in `header`.
    async fn answer_challenge(
        &self,
        target: &Target<'_>,
        url: &str,
        header: Option<&str>,
    ) -> Result<String, PullError> {
        let reference = target.reference;
        let cred = self.credential(reference);
        let unauthorized = || PullError::Unauthorized {
            reference: Box::new(reference.clone()),
            url: url.to_string(),
            status: 401,
            has_credentials: cred.is_some(),
        };
        let auth_err = |url: &str, reason: String| PullError::Auth {
            reference: Box::new(reference.clone()),
            url: url.to_string(),
            reason,
        };
        match header.and_then(parse_challenge) {
            None => Err(auth_err(
                url,
                format!("unsupported WWW-Authenticate challenge {header:?}"),
            )),
            Some(Challenge::Basic) => cred
                .as_ref()
                .map(Credential::basic_header)
                .ok_or_else(unauthorized),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let mut token_url = reqwest::Url::parse(&realm)
                    .map_err(|e| auth_err(&realm, format!("bad realm: {e}")))?;
                {
                    let mut q = token_url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    let ours = format!("repository:{}:pull", reference.repository());
                    q.append_pair("scope", scope.as_deref().unwrap_or(&ours));
                }
                let mut req = self.inner.http.get(token_url.clone());
                if let Some(c) = &cred {
                    req = req.header(AUTHORIZATION, c.basic_header());
                }
                let resp = tokio::time::timeout(self.inner.config.stall_timeout, req.send())
                    .await
                    .map_err(|_| self.timeout(reference, token_url.as_str()))?
                    .map_err(|e| auth_err(token_url.as_str(), e.to_string()))?;
                let status = resp.status();
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    return Err(PullError::Unauthorized {
                        reference: Box::new(reference.clone()),
                        url: token_url.to_string(),
                        status: status.as_u16(),
                        has_credentials: cred.is_some(),
                    });
                }
                if !status.is_success() {
                    return Err(auth_err(
                        token_url.as_str(),
                        format!("token endpoint answered {status}"),
                    ));
                }
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| auth_err(token_url.as_str(), e.to_string()))?;
                let token: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                    auth_err(token_url.as_str(), format!("malformed token response: {e}"))
                })?;
                let token = token.token.or(token.access_token).ok_or_else(|| {
                    auth_err(token_url.as_str(), "token response has no token".into())
                })?;
                Ok(format!("Bearer {token}"))
            }
        }
    }

    fn timeout(&self, reference: &Reference, url: &str) -> PullError {
        PullError::Timeout {
            reference: Box::new(reference.clone()),
            url: url.to_string(),
            secs: self.inner.config.stall_timeout.as_secs(),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.inner.config.retry_backoff * 2u32.saturating_pow(attempt.saturating_sub(1).min(6))
    }

    /// Downloads blob `digest` of `size` bytes into the store unless it is there already.
    /// Returns whether it was downloaded. Concurrent calls for one digest (in this process or
    /// another) download it once: the others wait on the blob lock and then find it stored.
    pub(super) async fn fetch_blob(
        &self,
        target: &Target<'_>,
        digest: &Digest,
        size: u64,
        progress: &Progress,
        is_layer: bool,
    ) -> Result<bool, PullError> {
        let store = &self.inner.store;
        let reference = target.reference;
        let store_err = |source: StoreError| PullError::Store {
            reference: Box::new(reference.clone()),
            source,
        };
        let cached = || {
            if is_layer {
                progress.emit(ProgressEvent::LayerCached {
                    digest: digest.clone(),
                    size,
                });
            }
            Ok(false)
        };
        if store.has_blob(digest) {
            return cached();
        }
        let _guard = store.lock_blob(digest).await.map_err(store_err)?;
        if store.has_blob(digest) {
            return cached();
        }
        let url = format!("{}blobs/{digest}", self.base_url(reference));
        let mut writer = store.blob_writer().map_err(store_err)?;
        let max = self.inner.config.max_attempts;
        let mut attempt = 1;
        loop {
            match self
                .download_into(target, &url, digest, size, &mut writer, progress, is_layer)
                .await
            {
                Ok(()) => break,
                Err(Retry::Fatal(e)) => return Err(e),
                Err(Retry::Transient(e)) if attempt >= max => return Err(e),
                Err(Retry::Transient(e)) => {
                    attempt += 1;
                    if is_layer {
                        progress.emit(ProgressEvent::LayerRetry {
                            digest: digest.clone(),
                            attempt,
                            reason: e.to_string(),
                        });
                    }
                    tokio::time::sleep(self.backoff(attempt - 1)).await;
                }
            }
        }
        let actual = writer.digest();
        if &actual != digest {
            return Err(PullError::DigestMismatch {
                reference: Box::new(reference.clone()),
                url,
                expected: digest.clone(),
                actual,
            });
        }
        writer.commit(digest).map_err(store_err)?;
        if is_layer {
            progress.emit(ProgressEvent::LayerDone {
                digest: digest.clone(),
                size,
            });
        }
        Ok(true)
    }

    /// One attempt: GET (with `Range` when `writer` holds a partial download) and stream the
    /// body into `writer` until `size` bytes are there.
    #[allow(clippy::too_many_arguments)]
    async fn download_into(
        &self,
        target: &Target<'_>,
        url: &str,
        digest: &Digest,
        size: u64,
        writer: &mut BlobWriter,
        progress: &Progress,
        is_layer: bool,
    ) -> Result<(), Retry> {
        let reference = target.reference;
        let store_err = |source: StoreError| {
            Retry::Fatal(PullError::Store {
                reference: Box::new(reference.clone()),
                source,
            })
        };
        let mut resp = self
            .get(target, url, None, Some(writer.len()))
            .await
            .map_err(Retry::Fatal)?;
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            let start = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(writer.len()) {
                writer.reset().map_err(store_err)?;
                return Err(Retry::Transient(
                    self.truncated(reference, url, digest, size, 0),
                ));
            }
        } else if !writer.is_empty() {
            // The registry ignored the Range: start over.
            writer.reset().map_err(store_err)?;
        }
        let stall = self.inner.config.stall_timeout;
        loop {
            let chunk = match tokio::time::timeout(stall, resp.chunk()).await {
                Err(_) => return Err(Retry::Fatal(self.timeout(reference, url))),
                Ok(Err(e)) => {
                    tracing::debug!(%url, error = %e, "blob download interrupted");
                    return Err(Retry::Transient(self.truncated(
                        reference,
                        url,
                        digest,
                        size,
                        writer.len(),
                    )));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            if writer.len() + chunk.len() as u64 > size {
                return Err(Retry::Fatal(PullError::TooLarge {
                    reference: Box::new(reference.clone()),
                    url: url.to_string(),
                    digest: digest.clone(),
                    expected: size,
                }));
            }
            writer.write(&chunk).map_err(store_err)?;
            if is_layer {
                progress.emit(ProgressEvent::LayerProgress {
                    digest: digest.clone(),
                    done: writer.len(),
                    total: size,
                });
            }
        }
        if writer.len() < size {
            return Err(Retry::Transient(self.truncated(
                reference,
                url,
                digest,
                size,
                writer.len(),
            )));
        }
        Ok(())
    }

    fn truncated(
        &self,
        reference: &Reference,
        url: &str,
        digest: &Digest,
        size: u64,
        got: u64,
    ) -> PullError {
        PullError::Truncated {
            reference: Box::new(reference.clone()),
            url: url.to_string(),
            digest: digest.clone(),
            expected: size,
            received: got,
        }
    }
}

/// Whether a failed attempt is worth repeating.
enum Retry {
    Transient(PullError),
    Fatal(PullError),
}

/// Connection-level failures (refused, reset, closed early, timed out) are worth a retry;
/// a malformed request or a redirect loop is not.
fn is_transient(e: &reqwest::Error) -> bool {
    !(e.is_builder() || e.is_redirect() || e.is_decode())
}
