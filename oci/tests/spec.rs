//! Bundle generation: `config.json` from an image configuration and container settings.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use cairn_oci::spec::{
    build_spec, write_bundle, CapabilityChanges, CgroupResources, ContainerSettings, MountSpec,
    Namespace, Rlimit, Seccomp, SpecError, CONFIG_FILE,
};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Capability, LinuxNamespaceType, PosixRlimitType, Spec};
use serde_json::json;

fn image(config: serde_json::Value) -> ImageConfiguration {
    serde_json::from_value(json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap()
}

fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("etc")).unwrap();
    fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\n",
    )
    .unwrap();
    dir
}

fn busybox_image() -> ImageConfiguration {
    image(json!({
        "Env": ["PATH=/bin", "LANG=C", "KEEP=image"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hello"],
        "WorkingDir": "/srv",
        "User": "nobody",
    }))
}

fn field(err: SpecError) -> &'static str {
    match err {
        SpecError::InvalidField { field, .. } => field,
        other => panic!("expected InvalidField, got {other}"),
    }
}

fn namespaces(spec: &Spec) -> Vec<LinuxNamespaceType> {
    spec.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect()
}

#[test]
fn image_config_becomes_the_process() {
    let root = rootfs();
    let spec = build_spec(&busybox_image(), root.path(), &ContainerSettings::default()).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(
        process.args().as_ref().unwrap(),
        &["/bin/sh", "-c", "echo hello"]
    );
    assert_eq!(process.cwd(), Path::new("/srv"));
    assert_eq!((process.user().uid(), process.user().gid()), (65534, 65534));
    assert_eq!(
        process.env().as_ref().unwrap(),
        &["PATH=/bin", "LANG=C", "KEEP=image", "HOME=/home"]
    );
    assert_eq!(process.terminal(), Some(false));
    assert_eq!(process.no_new_privileges(), Some(true));
    assert_eq!(spec.root().as_ref().unwrap().path(), root.path());
}

#[test]
fn settings_override_the_image() {
    let root = rootfs();
    let settings = ContainerSettings {
        args: Some(vec!["id -u".into()]),
        env: BTreeMap::from([
            ("LANG".into(), "C.UTF-8".into()),
            ("NEW".into(), "1".into()),
        ]),
        working_dir: Some("/tmp".into()),
        user: Some("0:65534".into()),
        hostname: Some("task-1.example".into()),
        ..ContainerSettings::default()
    };
    let spec = build_spec(&busybox_image(), root.path(), &settings).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(
        process.args().as_ref().unwrap(),
        &["/bin/sh", "-c", "id -u"]
    );
    assert_eq!(
        process.env().as_ref().unwrap(),
        &[
            "PATH=/bin",
            "LANG=C.UTF-8",
            "KEEP=image",
            "NEW=1",
            "HOME=/root"
        ]
    );
    assert_eq!(process.cwd(), Path::new("/tmp"));
    assert_eq!((process.user().uid(), process.user().gid()), (0, 65534));
    assert_eq!(spec.hostname().as_deref(), Some("task-1.example"));

    // An entrypoint override drops the image's Cmd, as `docker run --entrypoint` does.
    let settings = ContainerSettings {
        entrypoint: Some(vec!["/bin/true".into()]),
        ..ContainerSettings::default()
    };
    let spec = build_spec(&busybox_image(), root.path(), &settings).unwrap();
    assert_eq!(
        spec.process().as_ref().unwrap().args().as_ref().unwrap(),
        &["/bin/true"]
    );
}

#[test]
fn defaults_are_a_container_platforms() {
    let root = rootfs();
    let spec = build_spec(&busybox_image(), root.path(), &ContainerSettings::default()).unwrap();
    let linux = spec.linux().as_ref().unwrap();

    let ns = namespaces(&spec);
    for typ in [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
    ] {
        assert!(ns.contains(&typ), "{typ:?} not private");
    }
    assert!(
        !ns.contains(&LinuxNamespaceType::Network),
        "network is the host's by default"
    );

    let caps = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .as_ref()
        .unwrap();
    let effective = caps.effective().as_ref().unwrap();
    assert_eq!(effective.len(), 14);
    assert!(effective.contains(&Capability::NetRaw));
    assert!(!effective.contains(&Capability::SysAdmin));
    assert_eq!(caps.bounding(), caps.effective());

    let masked = linux.masked_paths().as_ref().unwrap();
    assert!(masked.iter().any(|p| p == "/proc/kcore"));
    assert!(masked.iter().any(|p| p == "/sys/firmware"));
    assert!(linux
        .readonly_paths()
        .as_ref()
        .unwrap()
        .iter()
        .any(|p| p == "/proc/sys"));

    let seccomp = linux.seccomp().as_ref().unwrap();
    let denied = seccomp.syscalls().as_ref().unwrap()[0].names();
    assert!(denied.iter().any(|s| s == "kexec_load"));

    let dests: Vec<PathBuf> = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.destination().clone())
        .collect();
    for d in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ] {
        assert!(dests.contains(&PathBuf::from(d)), "{d} not mounted");
    }
    let rlimits = spec.process().as_ref().unwrap().rlimits().as_ref().unwrap();
    assert!(rlimits
        .iter()
        .any(|r| r.typ() == PosixRlimitType::RlimitNofile));
}

#[test]
fn resources_mounts_and_namespaces_render() {
    let root = rootfs();
    let host_dir = tempfile::tempdir().unwrap();
    let settings = ContainerSettings {
        cgroups_path: Some("/cairn/c1".into()),
        resources: CgroupResources {
            cpu_shares: Some(512),
            cpu_quota_us: Some(50_000),
            cpu_period_us: Some(100_000),
            memory_limit_bytes: Some(64 << 20),
            memory_reservation_bytes: None,
            memory_swap_bytes: Some(128 << 20),
            pids_limit: Some(100),
        },
        mounts: vec![
            MountSpec::Bind {
                source: host_dir.path().to_path_buf(),
                destination: "/data".into(),
                read_only: true,
            },
            MountSpec::Tmpfs {
                destination: "/dev/shm".into(),
                size_bytes: Some(1 << 30),
                mode: None,
            },
        ],
        capabilities: CapabilityChanges {
            add: vec!["SYS_ADMIN".into()],
            drop: vec!["NET_RAW".into()],
        },
        rlimits: vec![Rlimit {
            resource: "nproc".into(),
            soft: 10,
            hard: 20,
        }],
        namespaces: cairn_oci::spec::Namespaces {
            network: Namespace::Private,
            ..Default::default()
        },
        readonly_rootfs: true,
        ..ContainerSettings::default()
    };
    let spec = build_spec(&busybox_image(), root.path(), &settings).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/cairn/c1"))
    );
    let res = linux.resources().as_ref().unwrap();
    let cpu = res.cpu().as_ref().unwrap();
    assert_eq!(
        (cpu.shares(), cpu.quota(), cpu.period()),
        (Some(512), Some(50_000), Some(100_000))
    );
    let mem = res.memory().as_ref().unwrap();
    assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(128 << 20)));
    assert_eq!(res.pids().as_ref().unwrap().limit(), 100);
    assert!(namespaces(&spec).contains(&LinuxNamespaceType::Network));
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));

    let mounts = spec.mounts().as_ref().unwrap();
    let shm: Vec<_> = mounts
        .iter()
        .filter(|m| m.destination() == Path::new("/dev/shm"))
        .collect();
    assert_eq!(
        shm.len(),
        1,
        "a mount with the same destination replaces the default"
    );
    assert!(shm[0]
        .options()
        .as_ref()
        .unwrap()
        .contains(&format!("size={}", 1u64 << 30)));
    let data = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/data"))
        .unwrap();
    assert!(data.options().as_ref().unwrap().iter().any(|o| o == "ro"));

    // CAP_SYS_ADMIN lifts the mount group from the seccomp profile.
    let denied = linux
        .seccomp()
        .as_ref()
        .unwrap()
        .syscalls()
        .as_ref()
        .unwrap()[0]
        .names();
    assert!(!denied.iter().any(|s| s == "mount"));
    let effective = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .as_ref()
        .unwrap()
        .effective()
        .clone()
        .unwrap();
    assert!(effective.contains(&Capability::SysAdmin) && !effective.contains(&Capability::NetRaw));

    let unconfined = ContainerSettings {
        seccomp: Seccomp::Unconfined,
        ..ContainerSettings::default()
    };
    let spec = build_spec(&busybox_image(), root.path(), &unconfined).unwrap();
    assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
}

#[test]
fn bad_settings_name_the_field() {
    let root = rootfs();
    let image = busybox_image();
    let bad = |settings: ContainerSettings| {
        field(build_spec(&image, root.path(), &settings).unwrap_err())
    };

    assert_eq!(
        bad(ContainerSettings {
            hostname: Some("bad_host!".into()),
            ..Default::default()
        }),
        "hostname"
    );
    assert_eq!(
        bad(ContainerSettings {
            working_dir: Some("rel".into()),
            ..Default::default()
        }),
        "working_dir"
    );
    assert_eq!(
        bad(ContainerSettings {
            user: Some("ghost".into()),
            ..Default::default()
        }),
        "user"
    );
    assert_eq!(
        bad(ContainerSettings {
            env: BTreeMap::from([("A=B".into(), "x".into())]),
            ..Default::default()
        }),
        "env"
    );
    assert_eq!(
        bad(ContainerSettings {
            cgroups_path: Some("relative/x".into()),
            ..Default::default()
        }),
        "cgroups_path"
    );
    let res = |r: CgroupResources| ContainerSettings {
        resources: r,
        ..Default::default()
    };
    assert_eq!(
        bad(res(CgroupResources {
            cpu_shares: Some(1),
            ..Default::default()
        })),
        "resources.cpu_shares"
    );
    assert_eq!(
        bad(res(CgroupResources {
            memory_limit_bytes: Some(1024),
            ..Default::default()
        })),
        "resources.memory_limit_bytes"
    );
    assert_eq!(
        bad(res(CgroupResources {
            memory_limit_bytes: Some(64 << 20),
            memory_swap_bytes: Some(32 << 20),
            ..Default::default()
        })),
        "resources.memory_swap_bytes"
    );
    assert_eq!(
        bad(res(CgroupResources {
            pids_limit: Some(0),
            ..Default::default()
        })),
        "resources.pids_limit"
    );
    assert_eq!(
        bad(ContainerSettings {
            mounts: vec![MountSpec::Bind {
                source: "/definitely/not/here".into(),
                destination: "/x".into(),
                read_only: false
            }],
            ..Default::default()
        }),
        "mounts.source"
    );
    assert_eq!(
        bad(ContainerSettings {
            mounts: vec![MountSpec::Tmpfs {
                destination: "/a/../b".into(),
                size_bytes: None,
                mode: None
            }],
            ..Default::default()
        }),
        "mounts.destination"
    );
    assert_eq!(
        bad(ContainerSettings {
            capabilities: CapabilityChanges {
                add: vec!["CAP_FLY".into()],
                drop: vec![]
            },
            ..Default::default()
        }),
        "capabilities.add"
    );
    assert_eq!(
        bad(ContainerSettings {
            rlimits: vec![Rlimit {
                resource: "nofile".into(),
                soft: 10,
                hard: 5
            }],
            ..Default::default()
        }),
        "rlimits.soft"
    );
    assert_eq!(
        bad(ContainerSettings {
            hostname: Some("h".into()),
            namespaces: cairn_oci::spec::Namespaces {
                uts: Namespace::Host,
                ..Default::default()
            },
            ..Default::default()
        }),
        "hostname"
    );
    let no_cmd = image_without_command();
    assert!(matches!(
        build_spec(&no_cmd, root.path(), &ContainerSettings::default()),
        Err(SpecError::NoCommand)
    ));
}

fn image_without_command() -> ImageConfiguration {
    image(json!({"Env": ["A=1"]}))
}

#[test]
fn bundle_is_written_atomically_and_reads_back() {
    let root = rootfs();
    let bundle = tempfile::tempdir().unwrap();
    let spec = build_spec(&busybox_image(), root.path(), &ContainerSettings::default()).unwrap();
    let path = write_bundle(&bundle.path().join("b"), &spec).unwrap();
    assert_eq!(path, bundle.path().join("b").join(CONFIG_FILE));
    let back = Spec::load(&path).unwrap();
    assert_eq!(back, spec);
    let names: Vec<_> = fs::read_dir(bundle.path().join("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from(CONFIG_FILE)],
        "no temporary file left"
    );
}
