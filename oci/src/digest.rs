//! Content digests (`sha256:<64 hex>`), the names of everything in the store and in a
//! registry (OCI image spec, "Digests"). Only sha256 is accepted: it is the only algorithm
//! registries and `docker save` produce in practice, and the store lays blobs out by it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A validated `sha256:<64 lower-case hex>` content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The algorithm part is not `sha256`.
    #[error("unsupported digest algorithm in {digest:?} (only sha256 is supported)")]
    UnsupportedAlgorithm {
        /// The whole digest string.
        digest: String,
    },
    /// The hex part is not 64 lower-case hex characters.
    #[error("malformed digest {digest:?}: expected sha256:<64 lower-case hex characters>")]
    Malformed {
        /// The whole digest string.
        digest: String,
    },
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The hex part (64 characters), the blob's file name in the store.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Builds a digest from a finished hasher.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self {
            hex: hex::encode(hasher.finalize()),
        }
    }

    /// A digest from its 64-character hex part.
    ///
    /// # Errors
    /// [`DigestError::Malformed`] when `hex` is not 64 lower-case hex characters.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self {
                hex: hex.to_string(),
            })
        } else {
            Err(DigestError::Malformed {
                digest: format!("sha256:{hex}"),
            })
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("sha256", hex)) => Self::from_hex(hex).map_err(|_| DigestError::Malformed {
                digest: s.to_string(),
            }),
            Some((alg, _)) if !alg.is_empty() => Err(DigestError::UnsupportedAlgorithm {
                digest: s.to_string(),
            }),
            _ => Err(DigestError::Malformed {
                digest: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_sha256() {
        let d = Digest::of(b"");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(s.parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_bad_digests() {
        assert!(matches!(
            "sha512:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
        for bad in [
            "sha256:abc",
            "sha256",
            "",
            ":",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(DigestError::Malformed { .. })),
                "{bad}"
            );
        }
    }
}
