//! Registry credentials and the `WWW-Authenticate` challenge flow (Docker's token
//! authentication spec: `distribution/docs/spec/auth/token.md`).
//!
//! A request goes out anonymously (or with what the last challenge of the same
//! registry+repository produced); on 401 the challenge says `Basic` (send the user's
//! credentials) or `Bearer realm=...,service=...,scope=...` (fetch a token from `realm`,
//! authenticating there with the user's credentials if any, and send it).

use std::collections::HashMap;
use std::path::Path;

use base64::prelude::BASE64_STANDARD;
use base64::Engine;
use serde::Deserialize;

use super::PullError;
use crate::reference::DOCKER_HUB;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// User name.
    pub username: String,
    /// Password or personal access token.
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}, <redacted>)", self.username)
    }
}

impl Credential {
    /// `Basic <base64(user:password)>`.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            BASE64_STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// The `auths` section of a Docker `config.json`.
#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Reads credentials from a Docker `config.json` (`~/.docker/config.json`): each `auths`
/// entry's base64 `auth` (`user:password`), or its `username`/`password`. Keys are
/// normalised like Docker's (`https://index.docker.io/v1/` is Docker Hub, schemes and paths
/// are dropped). Credential helpers (`credsStore`) are not consulted.
///
/// # Errors
/// [`PullError::Credentials`] naming the file and the entry that is malformed.
pub fn load_docker_config(path: &Path) -> Result<HashMap<String, Credential>, PullError> {
    let err = |reason: String| PullError::Credentials {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let file: DockerConfigFile =
        serde_json::from_slice(&bytes).map_err(|e| err(format!("malformed JSON: {e}")))?;
    let mut out = HashMap::new();
    for (key, entry) in file.auths {
        let cred = if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
            let decoded = BASE64_STANDARD
                .decode(auth.trim())
                .map_err(|e| err(format!("auths.{key}.auth is not base64: {e}")))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| err(format!("auths.{key}.auth is not UTF-8")))?;
            let (user, pass) = text
                .split_once(':')
                .ok_or_else(|| err(format!("auths.{key}.auth is not user:password")))?;
            Credential {
                username: user.into(),
                password: pass.into(),
            }
        } else if let (Some(username), Some(password)) = (entry.username, entry.password) {
            Credential { username, password }
        } else {
            continue;
        };
        out.insert(normalise_registry_key(&key), cred);
    }
    Ok(out)
}

/// `https://index.docker.io/v1/` -> `docker.io`; `http://host:5000/x` -> `host:5000`.
pub fn normalise_registry_key(key: &str) -> String {
    let key = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        h => h.to_string(),
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter, if any.
        service: Option<String>,
        /// The `scope` parameter, if any.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value (RFC 7235 auth-params with quoted strings).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (name, after) = s.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(name, value);
        s = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        _ => None,
    }
}

/// The token endpoint's answer (`token`, or OAuth2's `access_token`).
#[derive(Deserialize)]
pub(super) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="cairn-test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm="http://h/t", scope="a,b""#),
            Some(Challenge::Bearer {
                realm: "http://h/t".into(),
                service: None,
                scope: Some("a,b".into())
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn reads_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = BASE64_STANDARD.encode("alice:s3cr:et");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "127.0.0.1:5000":{{"username":"bob","password":"pw"}},
                "ghcr.io":{{}}}},"credsStore":"desktop"}}"#
            ),
        )
        .unwrap();
        let creds = load_docker_config(&path).unwrap();
        assert_eq!(creds["docker.io"].username, "alice");
        assert_eq!(creds["docker.io"].password, "s3cr:et");
        assert_eq!(creds["127.0.0.1:5000"].username, "bob");
        assert!(!creds.contains_key("ghcr.io"));
        std::fs::write(&path, r#"{"auths":{"x":{"auth":"!!"}}}"#).unwrap();
        let err = load_docker_config(&path).unwrap_err();
        assert!(err.to_string().contains("auths.x.auth"), "{err}");
    }
}
