//! Capability names and the container's capability set.

use std::collections::BTreeSet;
use std::str::FromStr;

use oci_spec::runtime::Capability;

use super::defaults::CAPABILITIES;
use super::settings::CapabilityChanges;
use super::SpecError;

/// Every capability oci-spec knows (`ALL` in an add or drop list).
pub const ALL: [Capability; 41] = [
    Capability::AuditControl,
    Capability::AuditRead,
    Capability::AuditWrite,
    Capability::BlockSuspend,
    Capability::Bpf,
    Capability::CheckpointRestore,
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::Kill,
    Capability::Lease,
    Capability::LinuxImmutable,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Mknod,
    Capability::NetAdmin,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetRaw,
    Capability::Perfmon,
    Capability::Setgid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysChroot,
    Capability::SysModule,
    Capability::SysNice,
    Capability::SysPacct,
    Capability::SysPtrace,
    Capability::SysRawio,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Syslog,
    Capability::WakeAlarm,
];

/// Parses `CAP_NET_RAW`, `net_raw` or `NET_RAW`.
pub fn parse(name: &str) -> Option<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).ok()
}

/// Names for `ALL` or one capability.
fn expand(field: &'static str, name: &str) -> Result<Vec<Capability>, SpecError> {
    if name.trim().eq_ignore_ascii_case("ALL") {
        return Ok(ALL.to_vec());
    }
    parse(name)
        .map(|c| vec![c])
        .ok_or_else(|| SpecError::InvalidField {
            field,
            reason: format!("unknown capability {name:?}"),
        })
}

/// The default set with `changes` applied (adds first, then drops), sorted by name so the
/// rendered spec is stable.
pub fn resolve(changes: &CapabilityChanges) -> Result<Vec<Capability>, SpecError> {
    let mut set: BTreeSet<String> = CAPABILITIES.iter().map(ToString::to_string).collect();
    for name in &changes.add {
        set.extend(
            expand("capabilities.add", name)?
                .iter()
                .map(ToString::to_string),
        );
    }
    for name in &changes.drop {
        for cap in expand("capabilities.drop", name)? {
            set.remove(&cap.to_string());
        }
    }
    Ok(set
        .iter()
        .filter_map(|name| Capability::from_str(name).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_or_without_prefix() {
        assert_eq!(parse("CAP_NET_RAW"), Some(Capability::NetRaw));
        assert_eq!(parse("net_raw"), Some(Capability::NetRaw));
        assert_eq!(parse("sys_admin"), Some(Capability::SysAdmin));
        assert_eq!(parse("NOPE"), None);
    }

    #[test]
    fn add_then_drop() {
        let changes = CapabilityChanges {
            add: vec!["SYS_PTRACE".into()],
            drop: vec!["net_raw".into()],
        };
        let caps = resolve(&changes).unwrap();
        assert!(caps.contains(&Capability::SysPtrace));
        assert!(!caps.contains(&Capability::NetRaw));
        assert!(caps.contains(&Capability::Chown));
        assert_eq!(caps.len(), 14);
    }

    #[test]
    fn drop_all_then_nothing() {
        let changes = CapabilityChanges {
            add: vec![],
            drop: vec!["ALL".into()],
        };
        assert!(resolve(&changes).unwrap().is_empty());
        let all = CapabilityChanges {
            add: vec!["all".into()],
            drop: vec![],
        };
        assert_eq!(resolve(&all).unwrap().len(), ALL.len());
    }

    #[test]
    fn unknown_names_the_field() {
        let changes = CapabilityChanges {
            add: vec![],
            drop: vec!["CAP_BOGUS".into()],
        };
        let err = resolve(&changes).unwrap_err();
        assert!(err.to_string().contains("capabilities.drop"), "{err}");
    }
}
