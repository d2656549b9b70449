//! Prometheus for tests: a real server scraping the given targets every second, and
//! `promtool check metrics` to lint an exposition.
//!
//! Prometheus 2.42 applies new scrape targets on a 5 s tick, so the first sample lands about
//! 5.5 s after start whatever the scrape interval; [`Prometheus::wait_for`] absorbs that.

use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::ports::free_port;
use crate::service::{wait_until, Service, ServiceDir};

/// How long Prometheus may take to report ready on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times a start is retried on a fresh port when the port was taken meanwhile.
const BIND_ATTEMPTS: usize = 3;

/// One `scrape_configs` entry: a job scraping `targets` (`host:port`) at `metrics_path`.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    name: String,
    targets: Vec<String>,
    metrics_path: String,
    /// `basic_auth` (username, password) for the scrapes.
    basic_auth: Option<(String, String)>,
}

impl ScrapeJob {
    /// A job named `name` (the `job` label) scraping `targets` at `/metrics`.
    pub fn new(name: &str, targets: &[String]) -> Self {
        Self {
            name: name.to_string(),
            targets: targets.to_vec(),
            metrics_path: "/metrics".into(),
            basic_auth: None,
        }
    }

    /// Scrapes with HTTP Basic authentication (`basic_auth` in the scrape config).
    #[must_use]
    pub fn basic_auth(mut self, username: &str, password: &str) -> Self {
        self.basic_auth = Some((username.to_string(), password.to_string()));
        self
    }

    /// Scrapes `path` instead of `/metrics`.
    #[must_use]
    pub fn metrics_path(mut self, path: &str) -> Self {
        self.metrics_path = path.to_string();
        self
    }
}

/// A running Prometheus on a free loopback port, with its TSDB in a [`ServiceDir`]; stopped
/// and removed on drop.
#[derive(Debug)]
pub struct Prometheus {
    service: Service,
    url: String,
    agent: ureq::Agent,
    // Last: dropped after the process stopped, and kept when a test panics.
    dir: ServiceDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`) at `/metrics` every second as job
    /// `cairn`, and waits until it is ready.
    pub fn start(targets: &[String]) -> Self {
        Self::with_jobs(&[ScrapeJob::new("cairn", targets)])
    }

    /// Starts Prometheus scraping `targets` at `metrics_path` every second as job `cairn`.
    pub fn start_with_path(targets: &[String], metrics_path: &str) -> Self {
        Self::with_jobs(&[ScrapeJob::new("cairn", targets).metrics_path(metrics_path)])
    }

    /// Starts Prometheus with the given scrape jobs (every second each) and waits until it
    /// answers `/-/ready`.
    ///
    /// # Panics
    /// When prometheus cannot be spawned or is not ready in time (with the tail of its log).
    pub fn with_jobs(jobs: &[ScrapeJob]) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        for attempt in 1..=BIND_ATTEMPTS {
            let dir = ServiceDir::new("prometheus");
            let config = dir.path().join("prometheus.yml");
            // YAML is a superset of JSON, so serde_json writes a config with correct quoting.
            let text = serde_json::to_string_pretty(&config_json(jobs)).expect("serialize config");
            std::fs::write(&config, text).expect("write prometheus.yml");
            let listen = format!("127.0.0.1:{}", free_port());
            let mut cmd = Command::new("prometheus");
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={listen}"))
                .arg("--storage.tsdb.retention.time=1h")
                .arg("--log.level=info");
            let mut service = Service::spawn("prometheus", cmd, dir.path())
                .unwrap_or_else(|e| panic!("spawn prometheus: {e}"));
            let url = format!("http://{listen}");
            let ready = wait_until(START_TIMEOUT, || {
                !service.is_running() || get_status(&agent, &format!("{url}/-/ready")) == Some(200)
            }) && service.is_running();
            if ready {
                return Self {
                    service,
                    url,
                    agent,
                    dir,
                };
            }
            let log = service.log();
            if attempt < BIND_ATTEMPTS && log.contains("address already in use") {
                eprintln!("prometheus: port of {listen} was taken, retrying on a new port");
                continue;
            }
            panic!(
                "prometheus did not become ready within {START_TIMEOUT:?}\n{}",
                tail(&log)
            );
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs an instant query (`/api/v1/query`) and returns `data.result`: for a vector
    /// expression an array of `{"metric": {labels}, "value": [time, "value"]}`.
    ///
    /// # Panics
    /// When Prometheus does not answer or rejects the query (the message has its error).
    pub fn query(&self, expr: &str) -> Value {
        let answer = self
            .get_json("/api/v1/query", &[("query", expr)])
            .unwrap_or_else(|e| panic!("query {expr:?}: {e}"));
        if answer["status"] != "success" {
            panic!("query {expr:?} failed: {answer}");
        }
        answer["data"]["result"].clone()
    }

    /// The value of the first sample `expr` returns now, if any.
    pub fn value(&self, expr: &str) -> Option<f64> {
        sample_value(&self.query(expr))
    }

    /// Polls `expr` every 200 ms until it returns a non-empty result and returns that result.
    /// On timeout the error has the last result and the health of every scrape target.
    pub fn wait_for(&self, expr: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(expr);
            if result.as_array().is_some_and(|samples| !samples.is_empty()) {
                return Ok(result);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{expr:?} returned no samples within {timeout:?} (last result {result}); \
                     targets: {}",
                    self.target_health()
                ));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The active scrape targets (`/api/v1/targets`: labels, `health`, `lastError`, …).
    pub fn targets(&self) -> Value {
        self.get_json("/api/v1/targets", &[("state", "active")])
            .map(|answer| answer["data"]["activeTargets"].clone())
            .unwrap_or_else(|e| panic!("list targets: {e}"))
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.service.log()
    }

    /// The directory holding `prometheus.yml`, the TSDB and the log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `url health lastError` for each target, one per line, for failure messages.
    fn target_health(&self) -> String {
        let targets = self.targets();
        let lines: Vec<String> = targets
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
                    .collect()
            })
            .unwrap_or_default();
        lines.join("; ")
    }

    fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let mut request = self.agent.get(format!("{}{path}", self.url));
        for (key, value) in query {
            request = request.query(*key, *value);
        }
        let mut response = request.call().map_err(|e| format!("GET {path}: {e}"))?;
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("read {path} body: {e}"))?;
        serde_json::from_str(&body).map_err(|e| format!("{path} answered non-JSON ({e}): {body}"))
    }
}

/// The `prometheus.yml` for `jobs`: every job scraped each second.
fn config_json(jobs: &[ScrapeJob]) -> Value {
    let scrape_configs: Vec<Value> = jobs
        .iter()
        .map(|job| {
            let mut config = json!({
                "job_name": job.name,
                "metrics_path": job.metrics_path,
                "static_configs": [{ "targets": job.targets }],
            });
            if let Some((username, password)) = &job.basic_auth {
                config["basic_auth"] = json!({ "username": username, "password": password });
            }
            config
        })
        .collect();
    json!({
        // The timeout must not exceed the interval (Prometheus rejects the config otherwise).
        "global": { "scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s" },
        "scrape_configs": scrape_configs,
    })
}

/// The HTTP status of a GET, or `None` when nothing answers.
fn get_status(agent: &ureq::Agent, url: &str) -> Option<u16> {
    agent
        .get(url)
        .call()
        .ok()
        .map(|response| response.status().as_u16())
}

/// The value of the first sample in an instant-vector result (`[{"value": [t, "v"]}, …]`).
pub fn sample_value(result: &Value) -> Option<f64> {
    result.get(0)?["value"].get(1)?.as_str()?.parse().ok()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Lints a text exposition with `promtool check metrics` (stdin). `Err` carries promtool's
/// findings (or why it could not run); lint problems such as a missing `HELP` are errors too.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run promtool: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let input = text.to_owned();
    // A writer thread, so a large exposition cannot deadlock against promtool's output.
    let writer = thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child
        .wait_with_output()
        .map_err(|e| format!("wait for promtool: {e}"))?;
    writer
        .join()
        .expect("promtool stdin writer panicked")
        .map_err(|e| format!("write to promtool: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_jobs_with_paths() {
        let targets = vec!["127.0.0.1:1234".to_string()];
        let config = config_json(&[
            ScrapeJob::new("a", &targets),
            ScrapeJob::new("b", &targets).metrics_path("/custom"),
        ]);
        assert_eq!(config["global"]["scrape_interval"], "1s");
        assert_eq!(config["scrape_configs"][0]["metrics_path"], "/metrics");
        assert_eq!(config["scrape_configs"][1]["metrics_path"], "/custom");
        assert_eq!(
            config["scrape_configs"][1]["static_configs"][0]["targets"][0],
            targets[0]
        );
    }

    #[test]
    fn reads_first_sample_value() {
        let result = json!([{ "metric": {}, "value": [1.5, "42.25"] }]);
        assert_eq!(sample_value(&result), Some(42.25));
        assert_eq!(sample_value(&json!([])), None);
    }
}
