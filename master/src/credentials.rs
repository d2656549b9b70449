//! The master's `credentials` file: who may authenticate, as Mesos's `--credentials`.
//!
//! Two forms are accepted, as Mesos does (`credentials.hpp`, `read`): JSON,
//! `{"credentials": [{"principal": "p", "secret": "s"}, ...]}`, and text, one
//! `principal secret` per line (blank lines and `#` comments skipped). Secrets are compared in
//! constant time, and never printed (`Debug` masks them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use subtle::ConstantTimeEq as _;

/// Why a credentials file is unusable; each names the file and the line or field.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: no credentials in the file")]
    Empty { path: PathBuf },
}

/// The principals and their secrets.
#[derive(Clone, Default)]
pub struct Credentials {
    secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("principals", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFile {
    credentials: Vec<JsonCredential>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCredential {
    principal: String,
    #[serde(default)]
    secret: String,
}

impl Credentials {
    /// Reads and checks `path` (JSON when it starts with `{`, else text).
    ///
    /// # Errors
    /// An unreadable file, bad JSON, a line that is not `principal secret`, an empty
    /// principal or secret, a principal listed twice, or no credentials at all.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text`, the contents of `path` (for messages).
    ///
    /// # Errors
    /// As [`Credentials::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Self, CredentialsError> {
        let mut secrets = BTreeMap::new();
        if text.trim_start().starts_with('{') {
            let json = |message: String| CredentialsError::Json {
                path: path.to_path_buf(),
                message,
            };
            let file: JsonFile = serde_json::from_str(text).map_err(|e| json(e.to_string()))?;
            for (i, c) in file.credentials.into_iter().enumerate() {
                let field = |name: &str| format!("credentials[{i}].{name}");
                if c.principal.is_empty() {
                    return Err(json(format!("{} is empty", field("principal"))));
                }
                if c.secret.is_empty() {
                    return Err(json(format!(
                        "{} is empty (principal '{}')",
                        field("secret"),
                        c.principal
                    )));
                }
                if secrets.insert(c.principal.clone(), c.secret).is_some() {
                    return Err(json(format!(
                        "{}: principal '{}' is listed twice",
                        field("principal"),
                        c.principal
                    )));
                }
            }
        } else {
            for (i, line) in text.lines().enumerate() {
                let line_err = |message: String| CredentialsError::Line {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message,
                };
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut words = line.split_whitespace();
                let (Some(principal), Some(secret), None) =
                    (words.next(), words.next(), words.next())
                else {
                    return Err(line_err("expected `principal secret`".into()));
                };
                if secrets
                    .insert(principal.to_string(), secret.to_string())
                    .is_some()
                {
                    return Err(line_err(format!("principal '{principal}' is listed twice")));
                }
            }
        }
        if secrets.is_empty() {
            return Err(CredentialsError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self { secrets })
    }

    /// Whether `principal` is known and `secret` is its secret. The secret is compared in
    /// constant time (its length is not hidden); an unknown principal is compared against
    /// itself so that it costs about the same.
    #[must_use]
    pub fn verify(&self, principal: &str, secret: &str) -> bool {
        match self.secrets.get(principal) {
            Some(known) => bool::from(known.as_bytes().ct_eq(secret.as_bytes())),
            None => {
                let _ = secret.as_bytes().ct_eq(secret.as_bytes());
                false
            }
        }
    }

    /// How many principals there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Never true for a loaded file (an empty file is refused).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// Which requests must authenticate (Mesos's `--authenticate_*` flags), and against what.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// The `credentials` file and what it holds; `None` when not set (then nothing
    /// authenticates).
    pub credentials: Option<(PathBuf, std::sync::Arc<Credentials>)>,
    /// Scheduler API calls (`authenticate_frameworks`).
    pub frameworks: bool,
    /// Agent protocol calls (`authenticate_agents`).
    pub agents: bool,
    /// Operator calls that change state (`authenticate_http_readwrite`).
    pub http_readwrite: bool,
    /// `/state`, the metrics and operator `GET_*` calls (`authenticate_http_readonly`).
    pub http_readonly: bool,
}

impl AuthConfig {
    /// Whether any request must authenticate.
    #[must_use]
    pub fn any(&self) -> bool {
        self.frameworks || self.agents || self.http_readwrite || self.http_readonly
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Credentials, String> {
        Credentials::parse(Path::new("/etc/cairn/credentials"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn json_and_text_forms_verify_their_secrets() {
        let json = parse(
            r#"{"credentials": [{"principal": "fw", "secret": "s1"},
                                 {"principal": "agent", "secret": "s2"}]}"#,
        )
        .unwrap();
        let text = parse("# comment\nfw s1\n\n  agent   s2  \n").unwrap();
        for c in [json, text] {
            assert_eq!(c.len(), 2);
            assert!(c.verify("fw", "s1"));
            assert!(c.verify("agent", "s2"));
            assert!(!c.verify("fw", "s2"));
            assert!(!c.verify("fw", "s1x"));
            assert!(!c.verify("fw", ""));
            assert!(!c.verify("nobody", "s1"));
            assert!(!format!("{c:?}").contains("s1"), "{c:?}");
        }
    }

    #[test]
    fn bad_text_lines_are_named_by_number() {
        let e = parse("fw s1\nonlyprincipal\n").unwrap_err();
        assert!(e.contains("/etc/cairn/credentials: line 2"), "{e}");
        assert!(e.contains("principal secret"), "{e}");
        let e = parse("fw s1\nfw s1 extra\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = parse("fw s1\n# x\nfw s2\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("listed twice"), "{e}");
    }

    #[test]
    fn bad_json_is_named_by_field() {
        let e = parse(r#"{"credentials": [{"principal": "fw"}]}"#).unwrap_err();
        assert!(e.contains("credentials[0].secret is empty"), "{e}");
        let e = parse(r#"{"credentials": [{"principal": "", "secret": "s"}]}"#).unwrap_err();
        assert!(e.contains("credentials[0].principal is empty"), "{e}");
        let e =
            parse(r#"{"credentials": [{"principal": "a", "secret": "s", "x": 1}]}"#).unwrap_err();
        assert!(e.contains("unknown field") && e.contains('x'), "{e}");
        let e = parse(r#"{"credentials": [{"principal": "a", "secret": "s"},"#).unwrap_err();
        assert!(e.starts_with("/etc/cairn/credentials: "), "{e}");
        let e = parse(
            r#"{"credentials": [{"principal": "a", "secret": "s"}, {"principal": "a", "secret": "t"}]}"#,
        )
        .unwrap_err();
        assert!(
            e.contains("credentials[1].principal") && e.contains("twice"),
            "{e}"
        );
    }

    #[test]
    fn empty_and_missing_files_are_refused() {
        assert!(parse("").unwrap_err().contains("no credentials"));
        assert!(parse("# only a comment\n")
            .unwrap_err()
            .contains("no credentials"));
        assert!(parse(r#"{"credentials": []}"#)
            .unwrap_err()
            .contains("no credentials"));
        let e = Credentials::load(Path::new("/nonexistent/creds"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/creds"), "{e}");
    }
}
