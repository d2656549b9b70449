//! Rendering an image configuration and [`ContainerSettings`] into an OCI runtime [`Spec`].

use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{ImageConfiguration, Os};
use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
};

use super::settings::{CgroupResources, ContainerSettings, MountSpec, Namespace, Rlimit, Seccomp};
use super::{caps, defaults, seccomp, user, SpecError};

fn invalid(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::InvalidField {
        field,
        reason: reason.into(),
    }
}

fn build_err(what: &'static str) -> impl Fn(oci_spec::OciSpecError) -> SpecError {
    move |e| SpecError::Build {
        what,
        reason: e.to_string(),
    }
}

/// Renders the runtime spec for a container whose root filesystem is `rootfs` (an absolute
/// path, already assembled), from its image configuration and its settings.
///
/// Docker's rules: the command is `Entrypoint + Cmd`, where the settings' entrypoint replaces
/// the image's (and drops its `Cmd`) and the settings' args replace `Cmd`; the environment is
/// the image's with the settings' merged over it, plus `PATH` and `HOME` when missing; the
/// user is resolved against the rootfs's `/etc/passwd` and `/etc/group`.
pub fn build_spec(
    image: &ImageConfiguration,
    rootfs: &Path,
    settings: &ContainerSettings,
) -> Result<Spec, SpecError> {
    if *image.os() != Os::Linux {
        return Err(invalid(
            "image.os",
            format!("{} images cannot run on linux", image.os()),
        ));
    }
    if !rootfs.is_absolute() {
        return Err(invalid(
            "rootfs",
            format!("{} is not absolute", rootfs.display()),
        ));
    }
    let config = image.config().clone().unwrap_or_default();

    let args = command(
        config.entrypoint().as_deref(),
        config.cmd().as_deref(),
        settings,
    )?;
    let user_spec = settings
        .user
        .as_deref()
        .or(config.user().as_deref())
        .unwrap_or("");
    let user = user::resolve(rootfs, user_spec)?;
    let env = environment(config.env().as_deref().unwrap_or(&[]), settings, &user.home)?;
    let cwd = settings
        .working_dir
        .as_deref()
        .or(config.working_dir().as_deref())
        .filter(|w| !w.is_empty())
        .unwrap_or("/");
    if !cwd.starts_with('/') {
        return Err(invalid("working_dir", format!("{cwd:?} is not absolute")));
    }

    let capabilities = caps::resolve(&settings.capabilities)?;
    let cap_set: oci_spec::runtime::Capabilities = capabilities.iter().copied().collect();
    let linux_caps = LinuxCapabilitiesBuilder::default()
        .bounding(cap_set.clone())
        .effective(cap_set.clone())
        .permitted(cap_set)
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .map_err(build_err("capabilities"))?;

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()
                .map_err(build_err("user"))?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(linux_caps)
        .rlimits(rlimits(&settings.rlimits)?)
        .no_new_privileges(settings.no_new_privileges)
        .build()
        .map_err(build_err("process"))?;

    let hostname = settings
        .hostname
        .as_deref()
        .map(check_hostname)
        .transpose()?;
    if hostname.is_some() && settings.namespaces.uts != Namespace::Private {
        return Err(invalid(
            "hostname",
            "needs a private uts namespace (namespaces.uts)",
        ));
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces(settings)?)
        .resources(resources(&settings.resources)?)
        .masked_paths(paths(
            "masked_paths",
            settings.masked_paths.as_deref(),
            &defaults::MASKED_PATHS,
        )?)
        .readonly_paths(paths(
            "readonly_paths",
            settings.readonly_paths.as_deref(),
            &defaults::READONLY_PATHS,
        )?);
    if let Some(path) = &settings.cgroups_path {
        linux = linux.cgroups_path(check_cgroups_path(path)?);
    }
    match &settings.seccomp {
        Seccomp::Default => linux = linux.seccomp(seccomp::default_profile(&capabilities)?),
        Seccomp::Unconfined => {}
        Seccomp::Custom(profile) => linux = linux.seccomp(profile.clone()),
    }
    let linux = linux.build().map_err(build_err("linux"))?;

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(settings.readonly_rootfs)
                .build()
                .map_err(build_err("root"))?,
        )
        .process(process)
        .mounts(mounts(&settings.mounts)?)
        .linux(linux);
    if let Some(hostname) = hostname {
        spec = spec.hostname(hostname);
    }
    spec.build().map_err(build_err("spec"))
}

/// `Entrypoint + Cmd` with Docker's override rules.
fn command(
    image_entrypoint: Option<&[String]>,
    image_cmd: Option<&[String]>,
    settings: &ContainerSettings,
) -> Result<Vec<String>, SpecError> {
    let entrypoint = settings
        .entrypoint
        .as_deref()
        .or(image_entrypoint)
        .unwrap_or(&[]);
    let cmd = match (&settings.args, &settings.entrypoint) {
        (Some(args), _) => args.as_slice(),
        (None, Some(_)) => &[],
        (None, None) => image_cmd.unwrap_or(&[]),
    };
    let args: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    match args.first() {
        None => Err(SpecError::NoCommand),
        Some(first) if first.is_empty() => Err(invalid("args", "the program name is empty")),
        Some(_) => Ok(args),
    }
}

/// The image's `Env` with the settings merged over it (in place, keeping the image's order),
/// then `PATH` and `HOME` when neither sets them.
fn environment(
    image_env: &[String],
    settings: &ContainerSettings,
    home: &str,
) -> Result<Vec<String>, SpecError> {
    fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
        if let Some(slot) = env.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value.to_string();
        } else {
            env.push((key.to_string(), value.to_string()));
        }
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in image_env {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        if key.is_empty() {
            return Err(invalid("image.env", format!("{entry:?} has no name")));
        }
        set(&mut env, key, value);
    }
    for (key, value) in &settings.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(invalid("env", format!("bad variable {key:?}")));
        }
        set(&mut env, key, value);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        set(&mut env, "PATH", defaults::PATH);
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        set(&mut env, "HOME", home);
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// An absolute path without `..`, as a container path must be.
fn check_container_path(field: &'static str, path: &Path) -> Result<(), SpecError> {
    if !path.is_absolute() {
        return Err(invalid(
            field,
            format!("{} is not absolute", path.display()),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(field, format!("{} contains '..'", path.display())));
    }
    Ok(())
}

/// The standard mounts with the settings' mounts added; a setting with the same
/// destination replaces the standard mount (e.g. a bigger `/dev/shm`).
fn mounts(extra: &[MountSpec]) -> Result<Vec<Mount>, SpecError> {
    let mut all = defaults::mounts()?;
    for spec in extra {
        let mount = match spec {
            MountSpec::Bind {
                source,
                destination,
                read_only,
            } => {
                check_container_path("mounts.destination", destination)?;
                if !source.is_absolute() {
                    return Err(invalid(
                        "mounts.source",
                        format!("{} is not absolute", source.display()),
                    ));
                }
                if !source.exists() {
                    return Err(invalid(
                        "mounts.source",
                        format!("{} does not exist", source.display()),
                    ));
                }
                let mut options = vec!["rbind", "nosuid", "nodev", "rprivate"];
                options.push(if *read_only { "ro" } else { "rw" });
                MountBuilder::default()
                    .destination(destination)
                    .typ("bind")
                    .source(source)
                    .options(options.into_iter().map(String::from).collect::<Vec<_>>())
                    .build()
            }
            MountSpec::Tmpfs {
                destination,
                size_bytes,
                mode,
            } => {
                check_container_path("mounts.destination", destination)?;
                let mut options: Vec<String> = vec![
                    "nosuid".into(),
                    "nodev".into(),
                    format!("mode={:o}", mode.unwrap_or(0o1777)),
                ];
                if let Some(size) = size_bytes {
                    if *size == 0 {
                        return Err(invalid("mounts.size_bytes", "a tmpfs of 0 bytes"));
                    }
                    options.push(format!("size={size}"));
                }
                MountBuilder::default()
                    .destination(destination)
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(options)
                    .build()
            }
        }
        .map_err(build_err("mount"))?;
        all.retain(|m| m.destination() != mount.destination());
        all.push(mount);
    }
    Ok(all)
}

fn namespaces(settings: &ContainerSettings) -> Result<Vec<LinuxNamespace>, SpecError> {
    let ns = &settings.namespaces;
    let wanted = [
        ("namespaces.pid", LinuxNamespaceType::Pid, &ns.pid),
        ("namespaces.uts", LinuxNamespaceType::Uts, &ns.uts),
        ("namespaces.ipc", LinuxNamespaceType::Ipc, &ns.ipc),
        (
            "namespaces.network",
            LinuxNamespaceType::Network,
            &ns.network,
        ),
        ("namespaces.cgroup", LinuxNamespaceType::Cgroup, &ns.cgroup),
    ];
    // The mount namespace is always private: the container gets its own root.
    let mut out = vec![LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Mount)
        .build()
        .map_err(build_err("namespace"))?];
    for (field, typ, how) in wanted {
        let builder = LinuxNamespaceBuilder::default().typ(typ);
        let built = match how {
            Namespace::Host => continue,
            Namespace::Private => builder.build(),
            Namespace::Join(path) => {
                if !path.is_absolute() {
                    return Err(invalid(
                        field,
                        format!("{} is not absolute", path.display()),
                    ));
                }
                builder.path(path).build()
            }
        };
        out.push(built.map_err(build_err("namespace"))?);
    }
    Ok(out)
}

fn to_i64(field: &'static str, v: u64) -> Result<i64, SpecError> {
    i64::try_from(v).map_err(|_| invalid(field, format!("{v} is too large")))
}

/// Renders the isolators' limits, checking each against the kernel's accepted range.
fn resources(r: &CgroupResources) -> Result<oci_spec::runtime::LinuxResources, SpecError> {
    let mut out = LinuxResourcesBuilder::default().devices(defaults::device_rules()?);

    if r.cpu_shares.is_some() || r.cpu_quota_us.is_some() || r.cpu_period_us.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(shares) = r.cpu_shares {
            // kernel/sched: MIN_SHARES 2, MAX_SHARES 1 << 18.
            if !(2..=262_144).contains(&shares) {
                return Err(invalid(
                    "resources.cpu_shares",
                    format!("{shares} not in 2..=262144"),
                ));
            }
            cpu = cpu.shares(shares);
        }
        if let Some(period) = r.cpu_period_us {
            // Documentation/scheduler/sched-bwc.rst: 1ms..=1s.
            if !(1000..=1_000_000).contains(&period) {
                return Err(invalid(
                    "resources.cpu_period_us",
                    format!("{period} not in 1000..=1000000"),
                ));
            }
            cpu = cpu.period(period);
        }
        if let Some(quota) = r.cpu_quota_us {
            if quota < 1000 {
                return Err(invalid(
                    "resources.cpu_quota_us",
                    format!("{quota} is below 1000"),
                ));
            }
            cpu = cpu.quota(to_i64("resources.cpu_quota_us", quota)?);
        }
        out = out.cpu(cpu.build().map_err(build_err("cpu resources"))?);
    }

    if r.memory_limit_bytes.is_some()
        || r.memory_reservation_bytes.is_some()
        || r.memory_swap_bytes.is_some()
    {
        let mut mem = LinuxMemoryBuilder::default();
        if let Some(limit) = r.memory_limit_bytes {
            // Docker's minimum: below a few MiB the runtime itself cannot start.
            if limit < 6 * 1024 * 1024 {
                return Err(invalid(
                    "resources.memory_limit_bytes",
                    format!("{limit} is below the 6 MiB minimum"),
                ));
            }
            mem = mem.limit(to_i64("resources.memory_limit_bytes", limit)?);
        }
        if let Some(reservation) = r.memory_reservation_bytes {
            if r.memory_limit_bytes.is_some_and(|l| reservation > l) {
                return Err(invalid(
                    "resources.memory_reservation_bytes",
                    "is above the memory limit",
                ));
            }
            mem = mem.reservation(to_i64("resources.memory_reservation_bytes", reservation)?);
        }
        if let Some(swap) = r.memory_swap_bytes {
            match r.memory_limit_bytes {
                None => {
                    return Err(invalid(
                        "resources.memory_swap_bytes",
                        "needs resources.memory_limit_bytes",
                    ))
                }
                Some(limit) if swap < limit => {
                    return Err(invalid(
                        "resources.memory_swap_bytes",
                        format!(
                            "{swap} is below the memory limit {limit} (it counts memory + swap)"
                        ),
                    ))
                }
                Some(_) => mem = mem.swap(to_i64("resources.memory_swap_bytes", swap)?),
            }
        }
        out = out.memory(mem.build().map_err(build_err("memory resources"))?);
    }

    if let Some(pids) = r.pids_limit {
        if pids == 0 {
            return Err(invalid(
                "resources.pids_limit",
                "0 would forbid the command itself",
            ));
        }
        out = out.pids(
            LinuxPidsBuilder::default()
                .limit(to_i64("resources.pids_limit", pids)?)
                .build()
                .map_err(build_err("pids resources"))?,
        );
    }
    out.build().map_err(build_err("resources"))
}

fn rlimits(extra: &[Rlimit]) -> Result<Vec<PosixRlimit>, SpecError> {
    let mut out: Vec<PosixRlimit> = Vec::new();
    let (soft, hard) = defaults::NOFILE;
    let mut push = |typ: PosixRlimitType, soft: u64, hard: u64| -> Result<(), SpecError> {
        out.retain(|r| r.typ() != typ);
        out.push(
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(soft)
                .hard(hard)
                .build()
                .map_err(build_err("rlimit"))?,
        );
        Ok(())
    };
    push(PosixRlimitType::RlimitNofile, soft, hard)?;
    for limit in extra {
        let upper = limit.resource.trim().to_ascii_uppercase();
        let name = if upper.starts_with("RLIMIT_") {
            upper
        } else {
            format!("RLIMIT_{upper}")
        };
        let typ = PosixRlimitType::from_str(&name)
            .map_err(|_| invalid("rlimits.resource", format!("unknown {:?}", limit.resource)))?;
        if limit.soft > limit.hard {
            return Err(invalid(
                "rlimits.soft",
                format!("{name}: soft {} is above hard {}", limit.soft, limit.hard),
            ));
        }
        push(typ, limit.soft, limit.hard)?;
    }
    Ok(out)
}

/// RFC 1123 host name: labels of letters, digits and `-`, at most 63 bytes in total for
/// `sethostname(2)` (`HOST_NAME_MAX` is 64 with the NUL).
fn check_hostname(name: &str) -> Result<String, SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(name.to_string())
    } else {
        Err(invalid(
            "hostname",
            format!("{name:?} is not a valid host name"),
        ))
    }
}

fn check_cgroups_path(path: &Path) -> Result<PathBuf, SpecError> {
    if !path.is_absolute() || path == Path::new("/") {
        return Err(invalid(
            "cgroups_path",
            format!(
                "{} must be an absolute path below the root cgroup",
                path.display()
            ),
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(invalid(
            "cgroups_path",
            format!("{} contains '.' or '..'", path.display()),
        ));
    }
    Ok(path.to_path_buf())
}

fn paths(
    field: &'static str,
    given: Option<&[String]>,
    default: &[&str],
) -> Result<Vec<String>, SpecError> {
    match given {
        None => Ok(default.iter().map(|p| (*p).to_string()).collect()),
        Some(list) => {
            for p in list {
                check_container_path(field, Path::new(p))?;
            }
            Ok(list.to_vec())
        }
    }
}
