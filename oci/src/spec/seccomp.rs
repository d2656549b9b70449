//! The default seccomp profile: a deny-list in the spirit of Docker's default profile.
//!
//! Docker's profile is an allow-list of about 350 syscalls; ours allows everything and denies
//! (with `EPERM`, so programs see an ordinary permission error) the syscalls that let a
//! container reach the kernel or the host beyond what namespaces isolate. As in Docker, a
//! group is lifted when the container holds the capability that guards it: a container given
//! `CAP_SYS_ADMIN` may `mount`, one given `CAP_SYS_MODULE` may load modules.
//!
//! Not denied, on purpose: `ptrace`, `process_vm_readv`/`writev` and `personality` (Docker
//! allows them on kernels >= 4.8, where `ptrace` no longer bypasses seccomp); `clone` with
//! namespace flags (Docker filters its flag argument; here `unshare` and `setns` are denied
//! and the missing capabilities stop `clone(CLONE_NEW*)`, except `CLONE_NEWUSER`).

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscall,
    LinuxSyscallBuilder,
};

use super::SpecError;

/// A group of denied syscalls and the capability that lifts the denial, if any.
#[derive(Debug, Clone, Copy)]
pub struct DeniedGroup {
    /// Why these are denied (for the docs).
    pub why: &'static str,
    /// The capability that lifts the denial.
    pub lifted_by: Option<Capability>,
    /// Syscall names (unknown names are skipped by the runtime's libseccomp).
    pub syscalls: &'static [&'static str],
}

/// The syscalls the default profile denies.
pub const DENIED: &[DeniedGroup] = &[
    DeniedGroup {
        why: "mounting and namespace changes escape the container's filesystem view",
        lifted_by: Some(Capability::SysAdmin),
        syscalls: &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "swapon",
            "swapoff",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "bpf",
            "fanotify_init",
            "name_to_handle_at",
        ],
    },
    DeniedGroup {
        why: "kernel modules change the host kernel",
        lifted_by: Some(Capability::SysModule),
        syscalls: &[
            "init_module",
            "finit_module",
            "delete_module",
            "create_module",
        ],
    },
    DeniedGroup {
        why: "reboot and kexec replace or stop the host kernel",
        lifted_by: Some(Capability::SysBoot),
        syscalls: &["reboot", "kexec_load", "kexec_file_load"],
    },
    DeniedGroup {
        why: "the clock is not namespaced",
        lifted_by: Some(Capability::SysTime),
        syscalls: &["settimeofday", "stime", "clock_settime", "clock_adjtime"],
    },
    DeniedGroup {
        why: "process accounting is host-wide",
        lifted_by: Some(Capability::SysPacct),
        syscalls: &["acct"],
    },
    DeniedGroup {
        why: "raw I/O ports reach hardware",
        lifted_by: Some(Capability::SysRawio),
        syscalls: &["iopl", "ioperm"],
    },
    DeniedGroup {
        why: "the kernel log leaks host information",
        lifted_by: Some(Capability::Syslog),
        syscalls: &["syslog"],
    },
    DeniedGroup {
        why: "opening files by handle bypasses the mount namespace (the 'shocker' escape)",
        lifted_by: Some(Capability::DacReadSearch),
        syscalls: &["open_by_handle_at"],
    },
    DeniedGroup {
        why: "NUMA policy of host memory",
        lifted_by: Some(Capability::SysNice),
        syscalls: &["mbind", "set_mempolicy", "move_pages"],
    },
    DeniedGroup {
        why: "performance events leak host information",
        lifted_by: Some(Capability::Perfmon),
        syscalls: &["perf_event_open"],
    },
    DeniedGroup {
        why: "the kernel keyring is not namespaced",
        lifted_by: None,
        syscalls: &["keyctl", "add_key", "request_key"],
    },
    DeniedGroup {
        why: "userfaultfd makes kernel races easy to win",
        lifted_by: None,
        syscalls: &["userfaultfd"],
    },
    DeniedGroup {
        why: "obsolete or legacy interfaces nobody needs in a container",
        lifted_by: None,
        syscalls: &[
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "nfsservctl",
            "get_kernel_syms",
            "query_module",
            "vm86",
            "vm86old",
        ],
    },
];

/// The default profile for a container holding `capabilities`: allow by default, deny
/// [`DENIED`] with `EPERM` except the groups its capabilities lift. Covers the x86 ABIs on
/// x86-64 (a 32-bit syscall must not slip past a 64-bit rule) and the native one elsewhere.
pub fn default_profile(capabilities: &[Capability]) -> Result<LinuxSeccomp, SpecError> {
    let denied: Vec<String> = DENIED
        .iter()
        .filter(|g| g.lifted_by.is_none_or(|cap| !capabilities.contains(&cap)))
        .flat_map(|g| g.syscalls.iter().map(|s| (*s).to_string()))
        .collect();
    let build_err = |e: oci_spec::OciSpecError| SpecError::Build {
        what: "seccomp profile",
        reason: e.to_string(),
    };
    let rule: LinuxSyscall = LinuxSyscallBuilder::default()
        .names(denied)
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .build()
        .map_err(build_err)?;
    let architectures = if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    };
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures)
        .syscalls(vec![rule])
        .build()
        .map_err(build_err)
}

/// `EPERM` (1 on every Linux ABI), what a denied syscall returns.
const EPERM: u32 = nix::errno::Errno::EPERM as u32;

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(profile: &LinuxSeccomp) -> Vec<String> {
        profile.syscalls().as_ref().unwrap()[0].names().clone()
    }

    #[test]
    fn denies_dangerous_syscalls_with_eperm() {
        let profile = default_profile(&[]).unwrap();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
        let rule = &profile.syscalls().as_ref().unwrap()[0];
        assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(rule.errno_ret(), Some(1));
        for name in [
            "kexec_load",
            "init_module",
            "mount",
            "unshare",
            "keyctl",
            "bpf",
        ] {
            assert!(
                denied(&profile).iter().any(|n| n == name),
                "{name} not denied"
            );
        }
    }

    #[test]
    fn capabilities_lift_their_group() {
        let profile = default_profile(&[Capability::SysAdmin]).unwrap();
        assert!(!denied(&profile).iter().any(|n| n == "mount"));
        assert!(denied(&profile).iter().any(|n| n == "init_module"));
        assert!(denied(&profile).iter().any(|n| n == "keyctl"));
    }
}
