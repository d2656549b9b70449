//! `cairn`: the Cairn command-line tool. Parses the command line, talks HTTP to the master
//! (and, for output and usage, to agents), and exits with a code scripts can rely on:
//! 0 ok, 1 error, 2 usage, 130 interrupted, and `cairn run` the task's own code.

mod cluster;
mod dev;
mod http;
mod images;
mod inspect;
mod leader;
mod pull_progress;
mod run;
mod scheduler;
mod size;
mod table;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

/// Cairn: run containers on a cluster, and look at it.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
struct Cli {
    /// The master: a URL or host:port (307 redirects to the leader are followed), or
    /// zk://host:port[,host:port...]/path to ask ZooKeeper which master leads.
    #[arg(
        long,
        global = true,
        env = "CAIRN_MASTER",
        default_value = "http://127.0.0.1:5050"
    )]
    master: String,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Principal to authenticate to the master as (HTTP Basic), with --secret-file; needed
    /// when the master sets `authenticate_*`.
    #[arg(long, global = true, env = "CAIRN_PRINCIPAL")]
    principal: Option<String>,
    /// File holding the secret of --principal (surrounding whitespace ignored).
    #[arg(long, global = true, env = "CAIRN_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Credential file in the agent's form, one line `principal secret`: instead of
    /// --principal and --secret-file.
    #[arg(long, global = true, env = "CAIRN_CREDENTIAL")]
    credential: Option<PathBuf>,
    /// CA certificates (PEM bundle) to trust for an `https://` master's certificate
    /// [default: the webpki roots].
    #[arg(long, global = true, env = "CAIRN_MASTER_CA")]
    master_ca: Option<PathBuf>,
    /// The masters serve HTTPS: with --master zk://..., reach the leader over https://.
    #[arg(long, global = true, env = "CAIRN_MASTER_TLS", num_args = 0..=1, default_missing_value = "true")]
    master_tls: Option<bool>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command as a task on the cluster and wait for it, exiting with its code.
    Run {
        /// Docker image to run in (a Mesos container with a DOCKER image).
        #[arg(long)]
        image: Option<String>,
        /// CPUs, e.g. 0.5.
        #[arg(long, default_value_t = 0.1)]
        cpus: f64,
        /// Memory, e.g. 256M or 1G (a bare number is MiB).
        #[arg(long, default_value = "128M", value_parser = size::parse_mb)]
        mem: f64,
        /// Disk, e.g. 1G.
        #[arg(long, value_parser = size::parse_mb)]
        disk: Option<f64>,
        /// Environment variable K=V (repeatable).
        #[arg(long, short = 'e', value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Role to take offers for.
        #[arg(long, default_value = "*")]
        role: String,
        /// Task name (also the task id's prefix).
        #[arg(long)]
        name: Option<String>,
        /// Print the task id once it runs and exit, leaving it running.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Give up when no offer fits within this long (e.g. 60s, 2m).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
        /// The command and its arguments (one argument is run by sh -c as is).
        #[arg(last = true, required = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// List agents.
    Agents,
    /// List tasks (live ones; -a for all).
    Ps {
        /// Include ended tasks.
        #[arg(long, short = 'a')]
        all: bool,
    },
    /// List frameworks.
    Frameworks,
    /// List the images in the agents' stores.
    Images {
        /// Only this agent: its id, hostname or host:port.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Kill a task.
    Kill {
        /// Task id.
        task: String,
        /// How long to wait for the task to end.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        wait: Duration,
    },
    /// Print a task's stdout (or stderr) from its sandbox.
    Logs {
        /// Task id.
        task: String,
        /// Keep printing as the output grows, until the task ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
    },
    /// Resource usage of running tasks, from the agents.
    Top {
        /// Refresh every this long (e.g. 2s) instead of printing once.
        #[arg(long, short = 'w', value_parser = parse_duration)]
        watch: Option<Duration>,
    },
    /// Run a whole local cluster in this process (a standalone master and one agent on
    /// 127.0.0.1) until Ctrl-C; then kill its tasks and remove its cgroups and state.
    Dev {
        /// State directory, kept on exit [default: a temporary directory, removed on exit].
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Master port (0: any free port).
        #[arg(long, default_value_t = 5050)]
        port: u16,
        /// Agent port (0: any free port).
        #[arg(long, default_value_t = 5051)]
        agent_port: u16,
        /// A `docker save` tarball to import into the agent's image store (repeatable).
        #[arg(long, value_name = "ARCHIVE")]
        import: Vec<std::path::PathBuf>,
        /// Resources the agent offers instead of the measured ones, e.g. `cpus:2;mem:2048`.
        #[arg(long)]
        resources: Option<String>,
        /// A registry (`host:port`) the agent pulls from over plain HTTP (repeatable).
        #[arg(long, value_name = "HOST:PORT")]
        insecure_registry: Vec<String>,
        /// Log the master's and the agent's info messages (warnings only otherwise).
        #[arg(long, short = 'v')]
        verbose: bool,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Check a resource request and print it in Mesos's resource form.
    Resources {
        /// CPUs, e.g. 0.5.
        #[arg(long, default_value_t = 1.0)]
        cpus: f64,
        /// Memory, e.g. 256M or 1G (a bare number is MiB).
        #[arg(long, default_value = "128M", value_parser = size::parse_mb)]
        mem: f64,
        /// Disk, e.g. 1G.
        #[arg(long, value_parser = size::parse_mb)]
        disk: Option<f64>,
    },
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not K=V")),
    }
}

/// `90`, `90s`, `500ms`, `2m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn main() {
    let cli = Cli::parse();
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("cairn: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// The principal and secret to send to the master, from --credential or
/// --principal/--secret-file.
fn credential(cli: &Cli) -> anyhow::Result<Option<(String, String)>> {
    use anyhow::Context as _;
    match (&cli.credential, &cli.principal, &cli.secret_file) {
        (None, None, None) => Ok(None),
        (Some(path), None, None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--credential {}", path.display()))?;
            let mut words = text.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(p), Some(s), None) => Ok(Some((p.to_string(), s.to_string()))),
                _ => anyhow::bail!(
                    "--credential {}: expected one line `principal secret`",
                    path.display()
                ),
            }
        }
        (Some(_), _, _) => {
            anyhow::bail!("give either --credential or --principal with --secret-file, not both")
        }
        (None, Some(principal), Some(path)) => {
            let secret = std::fs::read_to_string(path)
                .with_context(|| format!("--secret-file {}", path.display()))?;
            let secret = secret.trim();
            if secret.is_empty() {
                anyhow::bail!("--secret-file {}: empty", path.display());
            }
            Ok(Some((principal.clone(), secret.to_string())))
        }
        (None, Some(_), None) => anyhow::bail!("--principal needs --secret-file"),
        (None, None, Some(_)) => anyhow::bail!("--secret-file needs --principal"),
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    // Commands that never talk to the master must not wait for a ZooKeeper lookup.
    let talks_to_master = !matches!(
        cli.command,
        Command::Dev { .. } | Command::Completions { .. } | Command::Resources { .. }
    );
    let base = if talks_to_master {
        leader::resolve(&cli.master, cli.master_tls.unwrap_or(false))?
    } else {
        cli.master.clone()
    };
    let mut master = http::Endpoint::new(&base, "master");
    if talks_to_master {
        if let Some(path) = &cli.master_ca {
            let certs = cairn_tls::ca_bundle("--master-ca", path).map_err(|e| match e {
                cairn_tls::TlsError::Ca { path, message, .. } => {
                    anyhow::anyhow!("--master-ca {}: {message}", path.display())
                }
                other => other.into(),
            })?;
            master = master.trusting(&certs);
        }
        if let Some((principal, secret)) = credential(&cli)? {
            master = master.with_basic_auth(&principal, &secret);
        }
    }
    match cli.command {
        Command::Run {
            image,
            cpus,
            mem,
            disk,
            env,
            role,
            name,
            detach,
            timeout,
            command,
        } => {
            let interrupted = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone())?;
            signal_hook::flag::register(signal_hook::consts::SIGTERM, interrupted.clone())?;
            let spec = run::RunSpec {
                command,
                image,
                cpus,
                mem_mb: mem,
                disk_mb: disk,
                env,
                role,
                name,
                detach,
                timeout,
            };
            return run::run(&master, &spec, &interrupted);
        }
        Command::Dev {
            dir,
            port,
            agent_port,
            import,
            resources,
            insecure_registry,
            verbose,
        } => {
            return dev::run(&dev::DevOptions {
                dir,
                port,
                agent_port,
                import,
                resources,
                insecure_registries: insecure_registry,
                verbose,
            })
        }
        Command::Agents => inspect::agents(&mut master, cli.json)?,
        Command::Ps { all } => inspect::ps(&mut master, all, cli.json)?,
        Command::Frameworks => inspect::frameworks(&mut master, cli.json)?,
        Command::Images { agent } => images::images(&mut master, agent.as_deref(), cli.json)?,
        Command::Kill { task, wait } => inspect::kill(&mut master, &task, wait)?,
        Command::Logs {
            task,
            follow,
            stderr,
        } => inspect::logs(&mut master, &task, follow, stderr)?,
        Command::Top { watch } => inspect::top(&mut master, cli.json, watch)?,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut std::io::stdout());
        }
        Command::Resources { cpus, mem, disk } => {
            let mut r = cairn_api::Resources::new()
                .with_scalar("cpus", cpus)?
                .with_scalar("mem", mem)?;
            if let Some(disk) = disk {
                r = r.with_scalar("disk", disk)?;
            }
            println!("{r}");
        }
    }
    Ok(0)
}
