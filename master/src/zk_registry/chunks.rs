//! Splitting a [`Registry`] into chunks that each fit a znode, and joining them again.
//!
//! ZooKeeper refuses requests larger than `jute.maxbuffer` (1 MiB - 1 byte by default), so a
//! registry of 50,000 agents (about 6 MB of JSON) is stored as several chunks of at most
//! [`CHUNK_LIMIT`] bytes. Each chunk is itself a valid, partial [`Registry`] in JSON (a subset of
//! the entries of each map), so chunks can be read with any JSON tool; joining is a union.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::registry::{Registry, REGISTRY_VERSION};

/// The largest chunk: 900 KiB, leaving room below `jute.maxbuffer` for the path, the ACLs and
/// the fencing check that travel in the same multi-op.
pub const CHUNK_LIMIT: usize = 900 * 1024;

/// Bytes a chunk's JSON needs besides its entries: braces, the map names, the version.
const FRAME: usize = 256;

/// One registry entry does not fit in a chunk (a multi-megabyte hostname or quota).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "registry entry {map}[{key:?}] takes {bytes} bytes of JSON, more than a chunk holds ({limit})"
)]
pub struct EntryTooLarge {
    /// Which map of the registry.
    pub map: &'static str,
    /// The entry's key.
    pub key: String,
    /// Its size as JSON.
    pub bytes: usize,
    /// The chunk limit.
    pub limit: usize,
}

struct Builder {
    limit: usize,
    current: Registry,
    size: usize,
    chunks: Vec<Vec<u8>>,
}

impl Builder {
    fn flush(&mut self) {
        let chunk = std::mem::replace(&mut self.current, empty());
        self.chunks.push(to_json(&chunk));
        self.size = FRAME;
    }

    fn add<V: Serialize + Clone>(
        &mut self,
        map: &'static str,
        entries: &BTreeMap<String, V>,
        select: fn(&mut Registry) -> &mut BTreeMap<String, V>,
    ) -> Result<(), EntryTooLarge> {
        for (key, value) in entries {
            // `"key":value,` exactly as serde_json writes it inside the map.
            let bytes = serde_json::to_vec(key).map_or(0, |k| k.len())
                + serde_json::to_vec(value).map_or(0, |v| v.len())
                + 2;
            if FRAME + bytes > self.limit {
                return Err(EntryTooLarge {
                    map,
                    key: key.clone(),
                    bytes,
                    limit: self.limit,
                });
            }
            if self.size + bytes > self.limit {
                self.flush();
            }
            select(&mut self.current).insert(key.clone(), value.clone());
            self.size += bytes;
        }
        Ok(())
    }
}

fn empty() -> Registry {
    Registry {
        version: REGISTRY_VERSION,
        ..Registry::default()
    }
}

fn to_json(registry: &Registry) -> Vec<u8> {
    serde_json::to_vec(registry).expect("a registry of strings and numbers always serialises")
}

/// Splits `registry` into JSON chunks of at most `limit` bytes each; always at least one.
///
/// # Errors
/// A single entry larger than a chunk.
pub fn split(registry: &Registry, limit: usize) -> Result<Vec<Vec<u8>>, EntryTooLarge> {
    let mut builder = Builder {
        limit,
        current: empty(),
        size: FRAME,
        chunks: Vec::new(),
    };
    builder.add("agents", &registry.agents, |r| &mut r.agents)?;
    builder.add("unreachable", &registry.unreachable, |r| &mut r.unreachable)?;
    builder.add("gone", &registry.gone, |r| &mut r.gone)?;
    builder.add("weights", &registry.weights, |r| &mut r.weights)?;
    builder.add("quotas", &registry.quotas, |r| &mut r.quotas)?;
    builder.flush();
    Ok(builder.chunks)
}

/// Joins chunks read back (each a partial registry) into one registry.
pub fn join(chunks: impl IntoIterator<Item = Registry>) -> Registry {
    let mut whole = empty();
    for chunk in chunks {
        whole.version = whole.version.max(chunk.version);
        whole.agents.extend(chunk.agents);
        whole.unreachable.extend(chunk.unreachable);
        whole.gone.extend(chunk.gone);
        whole.weights.extend(chunk.weights);
        whole.quotas.extend(chunk.quotas);
    }
    whole
}

/// FNV-1a (64 bit) of `bytes`, recorded per chunk in the manifest to catch a chunk that does
/// not match it (it guards against mix-ups, not against tampering: ACLs do that).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmittedAgent, Quota};
    use cairn_api::AgentId;

    fn registry(agents: usize) -> Registry {
        let mut r = empty();
        for i in 0..agents {
            let id = format!("agent-{i:06}");
            r.agents.insert(
                id.clone(),
                AdmittedAgent {
                    id: AgentId::new(&id),
                    hostname: format!("node{i}.example"),
                    address: format!("10.0.{}.{}:5051", i / 256 % 256, i % 256),
                },
            );
            if i % 10 == 0 {
                r.unreachable.insert(id, 1_700_000_000.5);
            }
        }
        r.weights.insert("web".into(), 2.0);
        r.quotas.insert(
            "web".into(),
            Quota {
                guarantee: "cpus:1".into(),
                limit: "cpus:2".into(),
            },
        );
        r
    }

    #[test]
    fn chunks_respect_the_limit_and_join_back() {
        let r = registry(2_000);
        let chunks = split(&r, 16 * 1024).unwrap();
        assert!(chunks.len() > 5, "{}", chunks.len());
        assert!(chunks.iter().all(|c| c.len() <= 16 * 1024));
        let parts = chunks
            .iter()
            .map(|c| serde_json::from_slice::<Registry>(c).unwrap());
        assert_eq!(join(parts), r);
    }

    #[test]
    fn an_empty_registry_is_one_chunk() {
        let chunks = split(&empty(), CHUNK_LIMIT).unwrap();
        assert_eq!(chunks.len(), 1);
        let back = join([serde_json::from_slice::<Registry>(&chunks[0]).unwrap()]);
        assert_eq!(back, empty());
    }

    #[test]
    fn an_oversized_entry_is_named() {
        let mut r = empty();
        r.quotas.insert(
            "huge".into(),
            Quota {
                guarantee: "x".repeat(2_000),
                limit: String::new(),
            },
        );
        let err = split(&r, 1_024).unwrap_err();
        assert_eq!((err.map, err.key.as_str()), ("quotas", "huge"));
        assert!(err.to_string().contains("quotas[\"huge\"]"), "{err}");
    }

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
