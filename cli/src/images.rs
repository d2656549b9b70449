//! `cairn images`: the images in each agent's store, from the agents' `/images` (the master
//! does not track images; `docker images` across the cluster).

use anyhow::bail;
use serde_json::{json, Value};

use crate::cluster;
use crate::http::Endpoint;
use crate::table;

/// `cairn images [--agent ID|HOST|HOST:PORT]`. Every agent asked; an agent that cannot be
/// asked is reported on stderr and makes the exit code 1 after the others are printed.
pub fn images(master: &mut Endpoint, agent: Option<&str>, json_out: bool) -> anyhow::Result<()> {
    let state: Value = master.get("/state")?;
    let slaves: Vec<Value> = state["slaves"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| agent.is_none_or(|want| matches(s, want)))
        .cloned()
        .collect();
    if let Some(want) = agent {
        if slaves.is_empty() {
            bail!("no agent {want:?} is registered with the master (cairn agents lists them)");
        }
    }
    let mut found = Vec::new();
    let mut failed = 0;
    for s in &slaves {
        let Some(addr) = cluster::agent_address(s) else {
            continue;
        };
        let answer: Result<Value, _> = Endpoint::new(&addr, "agent").get("/images");
        match answer {
            Ok(v) => {
                for image in v["images"].as_array().into_iter().flatten() {
                    found.push(json!({
                        "agent_id": s["id"],
                        "hostname": s["hostname"],
                        "reference": image["reference"],
                        "digest": image["digest"],
                        "layers": image["layers"],
                        "size": image["size"],
                    }));
                }
            }
            Err(e) => {
                eprintln!("cairn: {e}");
                failed += 1;
            }
        }
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(found))
                .expect("a JSON value always serializes")
        );
    } else {
        let rows: Vec<Vec<String>> = found
            .iter()
            .map(|i| {
                vec![
                    i["hostname"].as_str().unwrap_or_default().to_string(),
                    i["reference"].as_str().unwrap_or_default().to_string(),
                    short_digest(i["digest"].as_str().unwrap_or_default()),
                    i["layers"].to_string(),
                    bytes(i["size"].as_u64().unwrap_or(0)),
                ]
            })
            .collect();
        table::print(&["AGENT", "IMAGE", "DIGEST", "LAYERS", "SIZE"], &rows);
    }
    if failed > 0 {
        bail!("{failed} of {} agents could not be asked", slaves.len());
    }
    Ok(())
}

/// An agent named by id, hostname or `host:port`.
fn matches(slave: &Value, want: &str) -> bool {
    slave["id"] == want
        || slave["hostname"] == want
        || cluster::agent_address(slave).is_some_and(|a| a == want)
}

/// `sha256:0123456789ab...` as `sha256:0123456789ab` (docker's 12 characters).
fn short_digest(d: &str) -> String {
    match d.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => d.to_string(),
    }
}

/// Bytes in binary units with one decimal: `812 B`, `1.2 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_digests_read_like_docker_images() {
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1_258_291), "1.2 MiB");
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_digest("odd"), "odd");
    }

    #[test]
    fn agents_match_by_id_hostname_or_address() {
        let s = json!({"id": "S1", "hostname": "node1", "pid": "slave(1)@10.0.0.1:5051"});
        assert!(matches(&s, "S1"));
        assert!(matches(&s, "node1"));
        assert!(matches(&s, "10.0.0.1:5051"));
        assert!(!matches(&s, "node2"));
    }
}
