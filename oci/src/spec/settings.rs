//! What a container asks for beyond its image: the input to [`super::build_spec`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::runtime::LinuxSeccomp;

/// The container's own settings, merged over the image configuration.
///
/// `Default` is what a container platform ships: Docker's default capabilities, the default
/// seccomp profile, masked and read-only `/proc` paths, private pid/mount/uts/ipc namespaces
/// and the host network. Every field documents how it overrides the image.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSettings {
    /// Replaces the image's `Entrypoint`. Like `docker run --entrypoint`, setting it also
    /// drops the image's `Cmd`; `Some(vec![])` clears the entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's `Cmd` (the arguments after the entrypoint).
    pub args: Option<Vec<String>>,
    /// Extra environment, merged over the image's `Env` (the container wins).
    pub env: BTreeMap<String, String>,
    /// Replaces the image's `WorkingDir`; must be absolute.
    pub working_dir: Option<String>,
    /// Replaces the image's `User` (`user`, `uid`, `user:group`, `uid:gid`, ...).
    pub user: Option<String>,
    /// The container's hostname (needs a private UTS namespace).
    pub hostname: Option<String>,
    /// Mounts added to (or replacing, by destination) the standard ones.
    pub mounts: Vec<MountSpec>,
    /// Which namespaces are private, shared with the host, or joined.
    pub namespaces: Namespaces,
    /// `linux.cgroupsPath`: an absolute path below the agent's cgroup parent. The runtime
    /// refuses a bundle without one (the default would land at each hierarchy's root).
    pub cgroups_path: Option<PathBuf>,
    /// Cgroup limits, as the isolators describe them.
    pub resources: CgroupResources,
    /// Changes to the default capability set.
    pub capabilities: CapabilityChanges,
    /// Resource limits (`setrlimit(2)`); these replace the default for the same resource.
    pub rlimits: Vec<Rlimit>,
    /// `PR_SET_NO_NEW_PRIVS` (see `prctl(2)`): setuid binaries gain nothing. On by default.
    pub no_new_privileges: bool,
    /// The seccomp filter.
    pub seccomp: Seccomp,
    /// Paths hidden from the container; `None` means [`super::defaults::MASKED_PATHS`].
    pub masked_paths: Option<Vec<String>>,
    /// Paths remounted read-only; `None` means [`super::defaults::READONLY_PATHS`].
    pub readonly_paths: Option<Vec<String>>,
    /// Mounts the root filesystem read-only.
    pub readonly_rootfs: bool,
}

impl Default for ContainerSettings {
    fn default() -> Self {
        Self {
            entrypoint: None,
            args: None,
            env: BTreeMap::new(),
            working_dir: None,
            user: None,
            hostname: None,
            mounts: Vec::new(),
            namespaces: Namespaces::default(),
            cgroups_path: None,
            resources: CgroupResources::default(),
            capabilities: CapabilityChanges::default(),
            rlimits: Vec::new(),
            no_new_privileges: true,
            seccomp: Seccomp::Default,
            masked_paths: None,
            readonly_paths: None,
            readonly_rootfs: false,
        }
    }
}

/// A mount the container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    /// A bind mount of a host path (`rbind`, `nosuid`, `nodev`).
    Bind {
        /// Absolute host path; must exist.
        source: PathBuf,
        /// Absolute path in the container.
        destination: PathBuf,
        /// Mounted read-only.
        read_only: bool,
    },
    /// A fresh tmpfs (`nosuid`, `nodev`).
    Tmpfs {
        /// Absolute path in the container.
        destination: PathBuf,
        /// `size=` in bytes; the kernel default (half of RAM) when `None`.
        size_bytes: Option<u64>,
        /// `mode=` of its root directory; `1777` when `None`.
        mode: Option<u32>,
    },
}

/// Where a namespace comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// A new namespace of the container's own.
    Private,
    /// The host's (the runtime's) namespace: not unshared.
    Host,
    /// An existing namespace, joined by its path (`/proc/<pid>/ns/net`, a bind-mounted file).
    Join(PathBuf),
}

/// The container's namespaces. The mount namespace is always private.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    /// Process ids; private by default (the command is pid 1).
    pub pid: Namespace,
    /// Hostname; private by default.
    pub uts: Namespace,
    /// System V IPC and POSIX message queues; private by default.
    pub ipc: Namespace,
    /// Network; the host's by default (for now: no CNI yet).
    pub network: Namespace,
    /// Cgroup namespace; the host's by default (as Docker on cgroup v1).
    pub cgroup: Namespace,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self {
            pid: Namespace::Private,
            uts: Namespace::Private,
            ipc: Namespace::Private,
            network: Namespace::Host,
            cgroup: Namespace::Host,
        }
    }
}

/// Cgroup limits as the isolators describe them; `None` leaves a knob at the kernel default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupResources {
    /// `cpu.shares` (v1; 2..=262144, 1024 per CPU in Mesos).
    pub cpu_shares: Option<u64>,
    /// `cpu.cfs_quota_us`: CPU time per period (>= 1000).
    pub cpu_quota_us: Option<u64>,
    /// `cpu.cfs_period_us` (1000..=1000000; the kernel default is 100000).
    pub cpu_period_us: Option<u64>,
    /// `memory.limit_in_bytes`.
    pub memory_limit_bytes: Option<u64>,
    /// `memory.soft_limit_in_bytes`.
    pub memory_reservation_bytes: Option<u64>,
    /// `memory.memsw.limit_in_bytes`: memory plus swap, so at least the memory limit.
    pub memory_swap_bytes: Option<u64>,
    /// `pids.max`.
    pub pids_limit: Option<u64>,
}

/// Changes to Docker's default capability set ([`super::defaults::CAPABILITIES`]).
/// Names are case-insensitive, with or without `CAP_`; `ALL` means every capability.
/// Drops apply after adds, as in `docker run --cap-add/--cap-drop`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilityChanges {
    /// Capabilities added to the default set.
    pub add: Vec<String>,
    /// Capabilities removed from the set.
    pub drop: Vec<String>,
}

/// One resource limit (`setrlimit(2)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, `nofile`, ... (case-insensitive).
    pub resource: String,
    /// Soft limit; at most `hard`.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// The seccomp filter applied before the command runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// [`super::seccomp::default_profile`], adjusted to the container's capabilities.
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// A profile of the caller's own.
    Custom(LinuxSeccomp),
}
