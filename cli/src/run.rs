//! `cairn run`: a minimal framework, as Mesos's `mesos-execute`. Subscribes, waits for an
//! offer that fits (declining the others for a while), launches one command task, prints its
//! state changes on stderr, acknowledges its updates, copies its stdout/stderr from the
//! sandbox, and ends with the task's exit code.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_api::v1::mesos::{
    CommandInfo, ContainerInfo, ContainerType, DockerImage, Environment, EnvironmentVariable,
    Filters, FrameworkInfo, Image, ImageType, MesosContainerInfo, Offer, TaskInfo, TaskStatus,
};
use cairn_api::v1::scheduler::{
    Accept, Acknowledge, CallType, Decline, EventType, Kill, Launch, Operation, OperationType,
};
use cairn_api::{AgentId, Reason, Resources, TaskId, TaskState};

use crate::cluster::{self, Sandbox, Tail};
use crate::http::Endpoint;
use crate::pull_progress::PullProgress;
use crate::scheduler::{Scheduler, StreamItem};

/// Seconds declined offers are not offered again (Mesos's `Filters.refuse_seconds`).
const DECLINE_SECONDS: f64 = 5.0;
/// How long a detached run's framework survives without a connection.
const DETACHED_FAILOVER_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub command: Vec<String>,
    pub image: Option<String>,
    pub cpus: f64,
    pub mem_mb: f64,
    pub disk_mb: Option<f64>,
    pub env: Vec<(String, String)>,
    pub role: String,
    pub name: Option<String>,
    pub detach: bool,
    pub timeout: Duration,
}

/// How the run ended: the code to exit with.
pub type ExitCode = i32;

impl RunSpec {
    fn resources(&self) -> anyhow::Result<Resources> {
        let mut r = Resources::new()
            .with_scalar("cpus", self.cpus)?
            .with_scalar("mem", self.mem_mb)?;
        if let Some(d) = self.disk_mb {
            r = r.with_scalar("disk", d)?;
        }
        Ok(r)
    }

    fn task(&self, id: &TaskId, offer: &Offer) -> anyhow::Result<TaskInfo> {
        // Cairn's `Resource` has no allocation_info: the master books the offer's role.
        let resources = self.resources()?.to_wire();
        let environment = (!self.env.is_empty()).then(|| Environment {
            variables: self
                .env
                .iter()
                .map(|(k, v)| EnvironmentVariable {
                    name: k.clone(),
                    value: Some(v.clone()),
                })
                .collect(),
        });
        let container = self.image.as_ref().map(|image| ContainerInfo {
            kind: ContainerType::Mesos,
            volumes: vec![],
            hostname: None,
            docker: None,
            mesos: Some(MesosContainerInfo {
                image: Some(Image {
                    kind: ImageType::Docker,
                    docker: Some(DockerImage {
                        name: image.clone(),
                    }),
                    cached: None,
                }),
            }),
        });
        Ok(TaskInfo {
            name: self.name.clone().unwrap_or_else(|| id.value.clone()),
            task_id: id.clone(),
            agent_id: offer.agent_id.clone(),
            resources,
            executor: None,
            command: Some(CommandInfo {
                environment,
                shell: Some(true),
                value: Some(shell_join(&self.command)),
                ..CommandInfo::default()
            }),
            container,
            data: None,
            labels: None,
            kill_policy: None,
            max_completion_time: None,
        })
    }
}

/// Joins argv into one `sh -c` line, quoting words the shell would split or expand. A single
/// word is passed as is, so `cairn run -- 'echo $HOME | wc'` keeps its shell meaning.
pub fn shell_join(args: &[String]) -> String {
    if args.len() == 1 {
        return args[0].clone();
    }
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn fits(offer: &Offer, want: &Resources) -> bool {
    Resources::from_wire(&offer.resources).is_ok_and(|have| have.contains(want))
}

fn describe(r: &Resources) -> String {
    let mut parts = vec![
        format!("cpus {}", r.cpus()),
        format!("mem {}", mib(r.mem_mb())),
    ];
    if r.disk_mb() > 0.0 {
        parts.push(format!("disk {}", mib(r.disk_mb())));
    }
    parts.join(", ")
}

/// `256 MiB`, `1.5 GiB`.
pub fn mib(mb: f64) -> String {
    if mb >= 1024.0 {
        format!("{} GiB", (mb / 1024.0 * 100.0).round() / 100.0)
    } else {
        format!("{} MiB", mb.round())
    }
}

/// The exit code and the line explaining a terminal status.
pub fn outcome(
    status: &TaskStatus,
    spec_mem_mb: f64,
    spec_disk_mb: Option<f64>,
) -> (ExitCode, Option<String>) {
    let message = status.message.clone().unwrap_or_default();
    let code_in_message = message
        .split("exited with status ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<i32>().ok());
    match status.state {
        TaskState::Finished => (0, None),
        TaskState::Failed | TaskState::Killed => match status.reason {
            Some(Reason::ContainerLimitationMemory) => (
                137,
                Some(format!(
                    "killed: memory limit {} exceeded",
                    mib(spec_mem_mb)
                )),
            ),
            Some(Reason::ContainerLimitationDisk) => (
                137,
                Some(format!(
                    "killed: disk limit {} exceeded",
                    mib(spec_disk_mb.unwrap_or(0.0))
                )),
            ),
            _ if status.state == TaskState::Killed => (137, Some(reason_line("killed", status))),
            _ => match code_in_message {
                Some(n) if n != 0 => (n, None),
                _ => (1, Some(reason_line("failed", status))),
            },
        },
        _ => (
            1,
            Some(reason_line(
                &status.state.as_str()[5..].to_lowercase(),
                status,
            )),
        ),
    }
}

fn reason_line(what: &str, status: &TaskStatus) -> String {
    let mut line = what.to_string();
    if let Some(m) = status.message.as_deref().filter(|m| !m.is_empty()) {
        line.push_str(": ");
        line.push_str(m);
    }
    if let Some(r) = status.reason {
        line.push_str(&format!(" ({})", r.as_str()));
    }
    line
}

/// Copies the task's stdout and stderr as they grow. Failing to reach the agent is reported
/// once and not fatal: the task's state still decides the exit code.
#[derive(Debug, Default)]
struct Output {
    sandbox: Option<(Sandbox, Tail, Tail)>,
    warned: bool,
    last_poll: Option<Instant>,
}

impl Output {
    fn poll(&mut self, master: &mut Endpoint, task: &str, force: bool) {
        if !force
            && self
                .last_poll
                .is_some_and(|t| t.elapsed() < Duration::from_millis(300))
        {
            return;
        }
        self.last_poll = Some(Instant::now());
        if self.sandbox.is_none() {
            match cluster::locate(master, task) {
                Ok(s) => {
                    let out = Tail::new(&s, "stdout");
                    let err = Tail::new(&s, "stderr");
                    self.sandbox = Some((s, out, err));
                }
                Err(e) => {
                    self.warn(&format!("cannot stream the task's output yet: {e}"), force);
                    return;
                }
            }
        }
        let Some((sandbox, out, _)) = self.sandbox.as_mut() else {
            return;
        };
        let dir = sandbox.directory.clone();
        match out.read(&mut sandbox.agent) {
            Ok(text) => {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            Err(e) => self.warn(&format!("cannot read {dir}/stdout: {e}"), force),
        }
        let Some((sandbox, _, err)) = self.sandbox.as_mut() else {
            return;
        };
        match err.read(&mut sandbox.agent) {
            Ok(text) => eprint!("{text}"),
            Err(e) => self.warn(&format!("cannot read {dir}/stderr: {e}"), force),
        }
    }

    /// Warns only at the end (`last`), so a sandbox not there yet is not noise.
    fn warn(&mut self, msg: &str, last: bool) {
        if last && !self.warned {
            self.warned = true;
            eprintln!("cairn: {msg}");
        }
    }
}

/// Runs the task; returns the exit code.
///
/// # Errors
/// The master cannot be reached or refuses the framework, or no offer fits in time.
pub fn run(
    master: &Endpoint,
    spec: &RunSpec,
    interrupted: &Arc<AtomicBool>,
) -> anyhow::Result<ExitCode> {
    let want = spec.resources()?;
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let info = FrameworkInfo {
        user,
        name: format!("cairn run {}", spec.name.as_deref().unwrap_or(""))
            .trim()
            .to_string(),
        role: Some(spec.role.clone()),
        failover_timeout: spec.detach.then_some(DETACHED_FAILOVER_SECS),
        hostname: hostname(),
        ..FrameworkInfo::default()
    };
    let mut sched = Scheduler::subscribe(master, info)?;
    let mut master = master.clone();
    let task_id = TaskId::new(format!(
        "{}-{}",
        spec.name.as_deref().unwrap_or("cairn-run"),
        unique_suffix()
    ));
    let deadline = Instant::now() + spec.timeout;
    let mut launched_on: Option<AgentId> = None;
    let mut largest: Option<Resources> = None;
    let mut output = Output::default();
    // Until the task runs or ends: the image pull's progress, if it has an image.
    let mut pull = spec.image.as_deref().map(PullProgress::new);
    let mut kill_sent = false;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            if spec.detach || launched_on.is_none() {
                return Ok(130);
            }
            if !kill_sent {
                eprintln!("cairn: interrupted, killing task {}", task_id.value);
                let mut call = sched.call(CallType::Kill);
                call.kill = Some(Kill {
                    task_id: task_id.clone(),
                    agent_id: launched_on.clone(),
                });
                sched.send(&call)?;
                kill_sent = true;
                // The second Ctrl-C exits at once.
                interrupted.store(false, Ordering::SeqCst);
                let flag = interrupted.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(10));
                    flag.store(true, Ordering::SeqCst);
                });
            } else {
                return Ok(130);
            }
        }
        if launched_on.is_none() && Instant::now() >= deadline {
            let seen = largest.as_ref().map_or_else(
                || "no offers at all (are any agents registered?)".to_string(),
                |r| format!("the largest offer was {}", describe(r)),
            );
            bail!(
                "no agent could fit the task ({}) within {}s: {seen}",
                describe(&want),
                spec.timeout.as_secs()
            );
        }
        if let (Some(agent), Some(pull)) = (&launched_on, pull.as_mut()) {
            pull.poll(&mut master, agent);
        }
        if launched_on.is_some() && !spec.detach {
            output.poll(&mut master, &task_id.value, false);
        }
        let item = match sched.events.recv_timeout(Duration::from_millis(200)) {
            Ok(item) => item,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("lost the master's event stream")
            }
        };
        let event = match item {
            StreamItem::Event(e) => e,
            StreamItem::Closed(why) => bail!("lost the master's event stream: {why}"),
        };
        match event.kind {
            EventType::Offers => {
                let offers = event.offers.map(|o| o.offers).unwrap_or_default();
                let mut decline = vec![];
                for offer in offers {
                    let have = Resources::from_wire(&offer.resources).unwrap_or_default();
                    if largest
                        .as_ref()
                        .is_none_or(|l| have.mem_mb() > l.mem_mb() || have.cpus() > l.cpus())
                    {
                        largest = Some(have);
                    }
                    if launched_on.is_some() || !fits(&offer, &want) {
                        decline.push(offer.id.clone());
                        continue;
                    }
                    let task = spec.task(&task_id, &offer)?;
                    let mut call = sched.call(CallType::Accept);
                    call.accept = Some(Accept {
                        offer_ids: vec![offer.id.clone()],
                        operations: vec![Operation {
                            kind: OperationType::Launch,
                            launch: Some(Launch {
                                task_infos: vec![task],
                            }),
                            launch_group: None,
                        }],
                        filters: Some(Filters {
                            refuse_seconds: Some(DECLINE_SECONDS),
                        }),
                    });
                    sched.send(&call).context("launching the task")?;
                    eprintln!(
                        "task {} launching on {} ({})",
                        task_id.value, offer.hostname, offer.agent_id.value
                    );
                    launched_on = Some(offer.agent_id.clone());
                }
                if !decline.is_empty() {
                    let mut call = sched.call(CallType::Decline);
                    call.decline = Some(Decline {
                        offer_ids: decline,
                        filters: Some(Filters {
                            refuse_seconds: Some(DECLINE_SECONDS),
                        }),
                    });
                    sched.send(&call).context("declining offers")?;
                }
            }
            EventType::Update => {
                let Some(update) = event.update else { continue };
                let status = update.status;
                if status.task_id != task_id {
                    continue;
                }
                if status.state == TaskState::Running || status.state.is_terminal() {
                    if let Some(mut pull) = pull.take() {
                        pull.finish();
                    }
                }
                let mut line = format!("task {} {}", task_id.value, status.state.as_str());
                if let Some(m) = status.message.as_deref().filter(|m| !m.is_empty()) {
                    line.push_str(&format!(": {m}"));
                }
                eprintln!("{line}");
                if let (Some(uuid), Some(agent)) = (&status.uuid, &status.agent_id) {
                    let mut call = sched.call(CallType::Acknowledge);
                    call.acknowledge = Some(Acknowledge {
                        agent_id: agent.clone(),
                        task_id: task_id.clone(),
                        uuid: uuid.clone(),
                    });
                    sched.send(&call).context("acknowledging a status update")?;
                }
                if spec.detach && status.state == TaskState::Running {
                    println!("{}", task_id.value);
                    return Ok(0);
                }
                if status.state.is_terminal() {
                    if launched_on.is_some() && !spec.detach {
                        output.poll(&mut master, &task_id.value, true);
                    }
                    let (code, why) = outcome(&status, spec.mem_mb, spec.disk_mb);
                    if let Some(why) = why {
                        eprintln!("cairn: task {} {why}", task_id.value);
                    }
                    let call = sched.call(CallType::Teardown);
                    let _ = sched.send(&call);
                    // Killed because of our Ctrl-C: the interruption is the outcome (as a
                    // shell reports it), not the KILLED task's 137.
                    return Ok(if kill_sent { 130 } else { code });
                }
            }
            EventType::Error => {
                bail!(
                    "the master ended the framework: {}",
                    event.error.map(|e| e.message).unwrap_or_default()
                )
            }
            _ => {}
        }
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
}

/// A short suffix unique enough for task ids: time and pid.
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", nanos % 0xffff_ffff, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::Source;

    #[test]
    fn joins_argv_for_sh() {
        let a = |v: &[&str]| shell_join(&v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>());
        assert_eq!(a(&["echo", "hi"]), "echo hi");
        assert_eq!(a(&["echo", "a b", "it's"]), r"echo 'a b' 'it'\''s'");
        assert_eq!(a(&["echo $HOME | wc"]), "echo $HOME | wc");
    }

    #[test]
    fn exit_codes_follow_the_status() {
        let mut s = TaskStatus::new(TaskId::new("t"), TaskState::Finished, Source::Executor);
        assert_eq!(outcome(&s, 64.0, None).0, 0);
        s.state = TaskState::Failed;
        s.message = Some("command exited with status 3".into());
        assert_eq!(outcome(&s, 64.0, None), (3, None));
        s.reason = Some(Reason::ContainerLimitationMemory);
        let (code, why) = outcome(&s, 256.0, None);
        assert_eq!(code, 137);
        assert_eq!(why.unwrap(), "killed: memory limit 256 MiB exceeded");
        s.state = TaskState::Lost;
        s.reason = None;
        s.message = Some("agent gone".into());
        assert_eq!(
            outcome(&s, 64.0, None),
            (1, Some("lost: agent gone".into()))
        );
    }
}
