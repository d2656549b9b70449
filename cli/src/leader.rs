//! `--master zk://host:port[,host:port...]/path`: the leading master is looked up once in
//! ZooKeeper (the `json.info_*` znode with the lowest sequence number, as Mesos's detector
//! reads it); calls then go to it over HTTP (HTTPS with `--master-tls`). A master that loses
//! the lead meanwhile answers with a 307 to the new one, which the HTTP client follows.

use std::time::Duration;

use anyhow::Context;

/// How long to wait for ZooKeeper to name a leader.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The master's base URL: `master` itself, or the leader a `zk://` URL names (`https://`
/// when `tls`: ZooKeeper's entries carry no scheme).
///
/// # Errors
/// A bad `zk://` URL, ZooKeeper unreachable or naming no leader within the timeout, or a
/// leader entry without an address.
pub fn resolve(master: &str, tls: bool) -> anyhow::Result<String> {
    if !master.trim_start().starts_with("zk://") {
        return Ok(master.to_string());
    }
    let info = cairn_zk::find_leader(master.trim(), LOOKUP_TIMEOUT)
        .with_context(|| "finding the leading master in ZooKeeper (--master)".to_string())?;
    let authority = info.authority().with_context(|| {
        format!(
            "the leading master's entry in ZooKeeper has no address (id {})",
            info.id
        )
    })?;
    let scheme = if tls { "https" } else { "http" };
    Ok(format!("{scheme}://{authority}"))
}
