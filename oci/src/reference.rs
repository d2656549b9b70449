//! Image references with Docker's normalisation.
//!
//! Follows `github.com/distribution/reference` (`ParseNormalizedNamed`), which is what
//! `docker pull` accepts: `busybox` means `docker.io/library/busybox:latest`; the first path
//! component is a registry host only when it contains `.` or `:` or is `localhost`;
//! repository paths are lower-case components joined by `/`; a tag is
//! `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; a digest follows `@`. `name:tag@digest` keeps both and
//! pulls by the digest, as Docker does.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry that references without a host name point at.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's Registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The tag assumed when a reference has neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// distribution's limit on the length of a repository name (including the host).
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// A fully normalised image reference: `registry/repository[:tag][@digest]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a string is not a valid image reference. Each variant carries the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The reference is empty.
    #[error("empty image reference")]
    Empty,
    /// The repository contains upper-case letters (Docker refuses these too).
    #[error("invalid image reference {reference:?}: repository name must be lowercase")]
    Uppercase {
        /// The reference as given.
        reference: String,
    },
    /// A path component of the repository is empty or has characters outside `[a-z0-9._-]`.
    #[error("invalid image reference {reference:?}: bad repository path component {component:?}")]
    BadComponent {
        /// The reference as given.
        reference: String,
        /// The offending component.
        component: String,
    },
    /// The registry host (or its port) is malformed.
    #[error("invalid image reference {reference:?}: bad registry host {host:?}")]
    BadHost {
        /// The reference as given.
        reference: String,
        /// The host part.
        host: String,
    },
    /// The tag is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid image reference {reference:?}: bad tag {tag:?}")]
    BadTag {
        /// The reference as given.
        reference: String,
        /// The tag part.
        tag: String,
    },
    /// The part after `@` is not a sha256 digest.
    #[error("invalid image reference {reference:?}: {source}")]
    BadDigest {
        /// The reference as given.
        reference: String,
        /// What was wrong with the digest.
        source: DigestError,
    },
    /// The repository name (host included) is longer than 255 characters.
    #[error("invalid image reference {reference:?}: repository name longer than 255 characters")]
    NameTooLong {
        /// The reference as given.
        reference: String,
    },
}

impl Reference {
    /// Parses and normalises `s` the way `docker pull` does.
    ///
    /// # Errors
    /// A [`ReferenceError`] naming what is malformed.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let input = s;
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let err_ref = || input.to_string();
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::BadDigest {
                        reference: err_ref(),
                        source,
                    })?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/', so `host:5000/name` has none.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::BadTag {
                    reference: err_ref(),
                    tag: tag.to_string(),
                });
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                if !valid_host(first) {
                    return Err(ReferenceError::BadHost {
                        reference: err_ref(),
                        host: first.to_string(),
                    });
                }
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase {
                reference: err_ref(),
            });
        }
        for component in path.split('/') {
            if !valid_component(component) {
                return Err(ReferenceError::BadComponent {
                    reference: err_ref(),
                    component: component.to_string(),
                });
            }
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if registry.len() + 1 + repository.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::NameTooLong {
                reference: err_ref(),
            });
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host as written (with port), `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host that serves the Registry API: `registry-1.docker.io` for Docker Hub.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when the input had neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask `/v2/<name>/manifests/<...>` for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same repository pinned to `digest` (the tag is dropped).
    #[must_use]
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            tag: None,
            ..self.clone()
        }
    }

    /// The same repository with `tag` (any digest is dropped).
    ///
    /// # Errors
    /// [`ReferenceError::BadTag`] when `tag` is not a valid tag.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::BadTag {
                reference: self.to_string(),
                tag: tag.into(),
            });
        }
        Ok(Self {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// distribution: `[\w][\w.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric() || b == b'_')
        && tag.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// distribution: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one or two '_', or any number of '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A DNS name or IPv4 address (labels of `[A-Za-z0-9-]`, not starting or ending with `-`) or a
/// bracketed IPv6 address, with an optional numeric port.
fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match tail {
                    "" => return true,
                    t => match t.strip_prefix(':') {
                        Some(p) => ("", Some(p)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return false;
        }
    }
    if name.is_empty() {
        return host.starts_with('[');
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    #[test]
    fn normalises_like_docker() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases = [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".into()),
            ("library/busybox", "docker.io/library/busybox:latest".into()),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest".into(),
            ),
            ("user/app", "docker.io/user/app:latest".into()),
            ("localhost/app", "localhost/app:latest".into()),
            ("localhost:5000/a/b/c:v1", "localhost:5000/a/b/c:v1".into()),
            (
                "127.0.0.1:5000/cairn/busybox",
                "127.0.0.1:5000/cairn/busybox:latest".into(),
            ),
            (
                "quay.io/coreos/etcd:v3.5",
                "quay.io/coreos/etcd:v3.5".into(),
            ),
            (
                &format!("busybox@{d}") as &str,
                format!("docker.io/library/busybox@{d}"),
            ),
            (
                &format!("busybox:1@{d}"),
                format!("docker.io/library/busybox:1@{d}"),
            ),
            ("[::1]:5000/x", "[::1]:5000/x:latest".into()),
            ("a.b/x__y-z.w---v:T_a.g-", "a.b/x__y-z.w---v:T_a.g-".into()),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), want, "{input}");
        }
    }

    #[test]
    fn parts_and_api_host() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.manifest_ref(), "latest");
        let r = Reference::parse("host:5000/ns/name:tag").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("host:5000", "ns/name", Some("tag"))
        );
        assert_eq!(r.api_host(), "host:5000");
    }

    #[test]
    fn rejects_malformed_references() {
        use ReferenceError as E;
        let check = |s: &str, ok: fn(&E) -> bool| {
            let e = Reference::parse(s).expect_err(s);
            assert!(ok(&e), "{s}: unexpected {e:?}");
            // The message names the input.
            if !s.is_empty() {
                assert!(e.to_string().contains(s), "{e}");
            }
        };
        check("", |e| matches!(e, E::Empty));
        check("Busybox", |e| matches!(e, E::Uppercase { .. }));
        check("docker.io/Library/busybox", |e| {
            matches!(e, E::Uppercase { .. })
        });
        check("busybox:", |e| matches!(e, E::BadTag { .. }));
        check("busybox:-x", |e| matches!(e, E::BadTag { .. }));
        check(&format!("busybox:{}", "t".repeat(129)), |e| {
            matches!(e, E::BadTag { .. })
        });
        check("busybox@sha256:abc", |e| matches!(e, E::BadDigest { .. }));
        check("busybox@md5:abc", |e| matches!(e, E::BadDigest { .. }));
        check("a//b", |e| matches!(e, E::BadComponent { .. }));
        check("-busybox", |e| matches!(e, E::BadComponent { .. }));
        check("busy box", |e| matches!(e, E::BadComponent { .. }));
        check("a/b...c", |e| matches!(e, E::BadComponent { .. }));
        check("host:99999/x", |e| matches!(e, E::BadHost { .. }));
        check("-bad.host/x", |e| matches!(e, E::BadHost { .. }));
        check(&format!("x.io/{}", "a".repeat(260)), |e| {
            matches!(e, E::NameTooLong { .. })
        });
    }
}
