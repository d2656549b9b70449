//! `cairn run --image`: the image pull's progress while the task is being launched, from the
//! agent's `/pulls`. A bar redrawn in place on a terminal, a plain line per finished layer
//! otherwise (logs and CI), and one line when the pull is done.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use cairn_api::AgentId;
use serde::Deserialize;
use serde_json::Value;

use crate::cluster;
use crate::http::Endpoint;

const POLL_EVERY: Duration = Duration::from_millis(250);
const BAR_WIDTH: usize = 24;

/// A pull as the agent's `/pulls` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Pull {
    pub reference: String,
    pub layers: usize,
    pub layers_done: usize,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

/// Follows one task's image pull on the agent it was launched on.
#[derive(Debug)]
pub struct PullProgress {
    image: String,
    terminal: bool,
    agent: Option<Endpoint>,
    last_poll: Option<Instant>,
    /// The last figures shown, and when the pull was first seen.
    shown: Option<(Pull, Instant)>,
    done: bool,
}

impl PullProgress {
    pub fn new(image: &str) -> Self {
        Self {
            image: image.to_string(),
            terminal: std::io::stderr().is_terminal(),
            agent: None,
            last_poll: None,
            shown: None,
            done: false,
        }
    }

    /// Asks the agent about the pull (at most every [`POLL_EVERY`]) and shows what changed.
    /// Errors only mean no progress is shown: the task's states still tell the outcome.
    pub fn poll(&mut self, master: &mut Endpoint, agent_id: &AgentId) {
        if self.done || self.last_poll.is_some_and(|t| t.elapsed() < POLL_EVERY) {
            return;
        }
        self.last_poll = Some(Instant::now());
        if self.agent.is_none() {
            self.agent = agent_endpoint(master, agent_id);
        }
        let Some(agent) = self.agent.as_mut() else {
            return;
        };
        let Ok(answer) = agent.get::<Value>("/pulls") else {
            return;
        };
        let pull = answer["pulls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Pull::deserialize(p).ok())
            .find(|p| same_image(&p.reference, &self.image));
        match pull {
            Some(pull) => self.show(pull),
            // Seen before and gone now: the pull ended (the task's state says how).
            None if self.shown.is_some() => self.finish(),
            None => {}
        }
    }

    fn show(&mut self, pull: Pull) {
        let first_seen = self.shown.as_ref().map_or_else(Instant::now, |(_, t)| *t);
        if self.terminal {
            eprint!("\r\x1b[2K{}", bar_line(&pull));
            let _ = std::io::stderr().flush();
        } else if self.shown.as_ref().is_none_or(|(before, _)| {
            before.layers_done != pull.layers_done || before.layers != pull.layers
        }) {
            eprintln!("{}", plain_line(&pull));
        }
        self.shown = Some((pull, first_seen));
    }

    /// Ends the display once the task runs or ended: the pull is over either way.
    pub fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some((pull, since)) = &self.shown {
            if self.terminal {
                eprint!("\r\x1b[2K");
            }
            eprintln!(
                "pulled {} ({} layers, {}) in {:.1}s",
                pull.reference,
                pull.layers,
                mib(pull.bytes_total),
                since.elapsed().as_secs_f64()
            );
        }
    }
}

/// The agent's HTTP endpoint from the master's `/state`.
fn agent_endpoint(master: &mut Endpoint, agent_id: &AgentId) -> Option<Endpoint> {
    let state: Value = master.get("/state").ok()?;
    let slave = state["slaves"]
        .as_array()?
        .iter()
        .find(|s| s["id"] == agent_id.value.as_str())?;
    Some(Endpoint::new(&cluster::agent_address(slave)?, "agent"))
}

/// Whether the agent's normalized reference (`docker.io/library/busybox:latest`) is the image
/// the user named (`busybox`).
fn same_image(agent_ref: &str, asked: &str) -> bool {
    match cairn_oci::reference::Reference::parse(asked) {
        Ok(r) => r.to_string() == agent_ref,
        Err(_) => agent_ref == asked,
    }
}

fn mib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // display only
    let m = bytes as f64 / (1024.0 * 1024.0);
    format!("{m:.1} MiB")
}

fn fraction(pull: &Pull) -> f64 {
    if pull.bytes_total == 0 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)] // display only
    let f = pull.bytes_done as f64 / pull.bytes_total as f64;
    f.clamp(0.0, 1.0)
}

/// `pulling busybox [#########---------------] 2/5 layers, 1.2 MiB of 3.4 MiB`
pub fn bar_line(pull: &Pull) -> String {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )] // a fraction of a small width
    let filled = (fraction(pull) * BAR_WIDTH as f64).round() as usize;
    format!(
        "pulling {} [{}{}] {}",
        pull.reference,
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled),
        figures(pull)
    )
}

/// `pulling busybox: 2/5 layers, 1.2 MiB of 3.4 MiB`
pub fn plain_line(pull: &Pull) -> String {
    format!("pulling {}: {}", pull.reference, figures(pull))
}

fn figures(pull: &Pull) -> String {
    if pull.layers == 0 {
        return "resolving the manifest".into();
    }
    format!(
        "{}/{} layers, {} of {}",
        pull.layers_done,
        pull.layers,
        mib(pull.bytes_done),
        mib(pull.bytes_total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(layers_done: usize, bytes_done: u64) -> Pull {
        Pull {
            reference: "r:5000/app:1".into(),
            layers: 4,
            layers_done,
            bytes_total: 4 << 20,
            bytes_done,
        }
    }

    #[test]
    fn lines_show_layers_and_bytes() {
        assert_eq!(
            plain_line(&pull(1, 3 << 19)),
            "pulling r:5000/app:1: 1/4 layers, 1.5 MiB of 4.0 MiB"
        );
        assert_eq!(
            bar_line(&pull(2, 2 << 20)),
            "pulling r:5000/app:1 [############------------] 2/4 layers, 2.0 MiB of 4.0 MiB"
        );
        let resolving = Pull {
            layers: 0,
            ..pull(0, 0)
        };
        assert_eq!(
            bar_line(&resolving),
            format!(
                "pulling r:5000/app:1 [{}] resolving the manifest",
                "-".repeat(24)
            )
        );
    }

    #[test]
    fn images_match_in_their_normalized_form() {
        assert!(same_image("docker.io/library/busybox:latest", "busybox"));
        assert!(same_image("127.0.0.1:5000/a/b:1", "127.0.0.1:5000/a/b:1"));
        assert!(!same_image("docker.io/library/alpine:latest", "busybox"));
    }
}
