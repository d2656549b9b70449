//! The bundle: the task's command, environment and mounts, the isolators' merged
//! preparation, rendered into `config.json` by `oci`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_api::{ContainerId, TaskId};
use cairn_isolators::{ContainerLimits, Preparation};
use cairn_oci::spec::{self, ContainerSettings, MountSpec};
use oci_spec::image::{ImageConfiguration, Os};
use oci_spec::runtime::Spec;

use super::types::{TaskCommand, Termination};

/// Where an image task sees its sandbox (Mesos's `--sandbox_directory` default).
pub const CONTAINER_SANDBOX: &str = "/mnt/mesos/sandbox";

/// Everything the bundle is made of.
#[derive(Debug)]
pub struct BundleInput<'a> {
    pub id: &'a ContainerId,
    pub task_id: &'a TaskId,
    /// The image's configuration; `None` for a host-filesystem task.
    pub image: Option<&'a ImageConfiguration>,
    /// The root filesystem's path in the container's (the supervisor's) mount namespace.
    pub rootfs: &'a Path,
    /// Where the agent reads that root filesystem now (through the supervisor's
    /// `/proc/<pid>/root`): the image's users and the command are looked up there.
    pub rootfs_view: &'a Path,
    pub bundle: &'a Path,
    pub command: Option<&'a TaskCommand>,
    pub sandbox: &'a Path,
    pub limits: &'a ContainerLimits,
    pub env: &'a BTreeMap<String, String>,
    pub preparation: &'a Preparation,
    pub cgroup: &'a Path,
}

/// The task's environment: its sandbox and resources, under Mesos's and Cairn's names.
fn environment(input: &BundleInput<'_>, sandbox_in_container: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mb = |b: u64| format!("{}", b / (1024 * 1024));
    for (k, v) in [
        ("MESOS_SANDBOX", sandbox_in_container.to_string()),
        ("CAIRN_SANDBOX", sandbox_in_container.to_string()),
        ("MESOS_TASK_ID", input.task_id.to_string()),
        ("CAIRN_TASK_ID", input.task_id.to_string()),
        ("MESOS_CONTAINER_ID", input.id.to_string()),
        ("CAIRN_CONTAINER_ID", input.id.to_string()),
        ("CAIRN_CPUS", format!("{}", input.limits.cpus)),
        ("CAIRN_MEM_MB", mb(input.limits.mem_bytes)),
    ] {
        env.insert(k.to_string(), v);
    }
    if let Some(disk) = input.limits.disk_bytes {
        env.insert("CAIRN_DISK_MB".into(), mb(disk));
    }
    env.extend(input.preparation.env.clone());
    env.extend(input.env.clone());
    env
}

/// Renders and writes `<bundle>/config.json`; checks the command exists in the root
/// filesystem first, so a typo fails the launch with a clear message instead of exit 127.
pub fn render(input: &BundleInput<'_>) -> Result<Spec, Termination> {
    let host = input.image.is_none();
    let sandbox_in_container = if host {
        input.sandbox.to_string_lossy().into_owned()
    } else {
        CONTAINER_SANDBOX.to_string()
    };
    let host_config = {
        let mut c = ImageConfiguration::default();
        c.set_os(Os::Linux);
        c
    };
    let image = input.image.unwrap_or(&host_config);
    let image_cwd = image
        .config()
        .as_ref()
        .and_then(|c| c.working_dir().clone())
        .filter(|w| !w.is_empty());
    let (entrypoint, args) = match input.command {
        None => (None, None),
        Some(TaskCommand::Shell(cmd)) => (
            Some(vec!["/bin/sh".to_string(), "-c".to_string(), cmd.clone()]),
            Some(Vec::new()),
        ),
        Some(TaskCommand::Argv(argv)) => (Some(argv.clone()), Some(Vec::new())),
    };
    let mut mounts = vec![MountSpec::Bind {
        source: input.sandbox.to_path_buf(),
        destination: PathBuf::from(&sandbox_in_container),
        read_only: false,
    }];
    for (source, destination, read_only) in &input.preparation.mounts {
        mounts.push(MountSpec::Bind {
            source: source.clone(),
            destination: destination.clone(),
            read_only: *read_only,
        });
    }
    let settings = ContainerSettings {
        entrypoint,
        args,
        env: environment(input, &sandbox_in_container),
        // Mesos: the image's WorkingDir when it has one, else the sandbox.
        working_dir: Some(image_cwd.unwrap_or_else(|| sandbox_in_container.clone())),
        mounts,
        cgroups_path: Some(input.cgroup.to_path_buf()),
        readonly_rootfs: host,
        ..ContainerSettings::default()
    };
    let mut spec = spec::build_spec(image, input.rootfs_view, &settings).map_err(|e| match e {
        spec::SpecError::NoCommand => Termination::launch_failed(
            "no command: the task gives none and the image has no Entrypoint or Cmd",
        ),
        e => Termination::launch_failed(format!("cannot render the container spec: {e}")),
    })?;
    check_command(&spec, input.rootfs_view)?;
    if let Some(mut root) = spec.root().clone() {
        root.set_path(input.rootfs.to_path_buf());
        spec.set_root(Some(root));
    }
    spec::write_bundle(input.bundle, &spec)
        .map_err(|e| Termination::launch_failed(format!("cannot write the bundle: {e}")))?;
    Ok(spec)
}

/// Looks the command up in the root filesystem as `execvp(3)` would (without following
/// symlinks out of it: an entry that exists is enough).
fn check_command(spec: &Spec, rootfs: &Path) -> Result<(), Termination> {
    let Some(process) = spec.process() else {
        return Ok(());
    };
    let Some(program) = process.args().as_ref().and_then(|a| a.first()) else {
        return Err(Termination::launch_failed("empty command"));
    };
    let exists = |p: &str| {
        rootfs
            .join(p.trim_start_matches('/'))
            .symlink_metadata()
            .is_ok()
    };
    if program.contains('/') {
        let cwd = process.cwd().to_string_lossy().into_owned();
        let full = if program.starts_with('/') {
            program.clone()
        } else {
            format!("{cwd}/{program}")
        };
        if exists(&full) {
            return Ok(());
        }
        return Err(Termination::launch_failed(format!(
            "command {program:?} not found in the container's filesystem"
        )));
    }
    let path = process
        .env()
        .as_ref()
        .and_then(|env| env.iter().find_map(|e| e.strip_prefix("PATH=")))
        .unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .to_string();
    if path
        .split(':')
        .any(|dir| exists(&format!("{dir}/{program}")))
    {
        return Ok(());
    }
    Err(Termination::launch_failed(format!(
        "command {program:?} not found in the container's PATH ({path})"
    )))
}
