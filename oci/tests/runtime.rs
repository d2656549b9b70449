//! Running bundles through libcontainer on this host, as root, with a busybox rootfs.
//!
//! Each test builds a rootfs (a copy of `/bin/busybox` with an applet symlink per applet,
//! `/etc/passwd` and `/etc/group`), renders a bundle with `cairn_oci::spec` and runs it. The
//! containers' cgroups go below a fresh directory under this process's own cgroup (in every
//! v1 hierarchy), removed at the end; each run checks that nothing is left behind: no state
//! directory, no cgroup.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use cairn_oci::runtime::{
    own_cgroup, v1_leaf_dirs, ContainerStatus, ExitStatus, Output, Runtime, RuntimeConfig,
    RuntimeError,
};
use cairn_oci::spec::{
    build_spec, write_bundle, CapabilityChanges, CgroupResources, ContainerSettings, MountSpec,
    Namespace, Namespaces, Seccomp,
};
use cairn_testsupport::cgroups::CgroupParent;
use cairn_testsupport::{require_root, wait_until, ServiceDir};
use nix::sys::signal::Signal;
use oci_spec::image::ImageConfiguration;
use serde_json::json;

/// libcontainer forks with raw clone(2) (no fork handlers): keep container creation in one
/// thread at a time.
static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct Fixture {
    // Field order is drop order: the cgroup parent goes before the directory.
    cgroups: CgroupParent,
    runtime: Runtime,
    rootfs: PathBuf,
    dir: ServiceDir,
    _serial: MutexGuard<'static, ()>,
}

fn fixture(test: &str) -> Option<Fixture> {
    if !require_root(test) {
        return None;
    }
    let serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = ServiceDir::new(&format!("oci-{test}"));
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let cgroups = CgroupParent::new(test);
    let runtime = Runtime::new(RuntimeConfig {
        state_root: dir.path().join("state"),
        cgroup_parent: cgroups.path.clone(),
    })
    .unwrap();
    Some(Fixture {
        cgroups,
        runtime,
        rootfs,
        dir,
        _serial: serial,
    })
}

fn busybox_rootfs(root: &Path) {
    for d in ["bin", "etc", "proc", "dev", "sys", "tmp", "root", "home"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

fn image(config: serde_json::Value) -> ImageConfiguration {
    serde_json::from_value(json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap()
}

fn sh(script: &str) -> ContainerSettings {
    ContainerSettings {
        args: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
        ..ContainerSettings::default()
    }
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Fixture {
    fn id(&self) -> String {
        format!(
            "c{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Renders and writes the bundle for `id`, its cgroup below our parent.
    fn bundle(&self, id: &str, image: &ImageConfiguration, settings: ContainerSettings) -> PathBuf {
        let settings = ContainerSettings {
            cgroups_path: Some(self.runtime.cgroup_path_for(id)),
            ..settings
        };
        let spec = build_spec(image, &self.rootfs, &settings).unwrap();
        let bundle = self.dir.path().join("bundles").join(id);
        write_bundle(&bundle, &spec).unwrap();
        bundle
    }

    fn outputs(&self, id: &str) -> (Output, Output) {
        (
            Output::File(self.dir.path().join(format!("{id}.out"))),
            Output::File(self.dir.path().join(format!("{id}.err"))),
        )
    }

    fn read(&self, id: &str, ext: &str) -> String {
        fs::read_to_string(self.dir.path().join(format!("{id}.{ext}"))).unwrap_or_default()
    }

    /// Runs a container to completion and deletes it, checking nothing is left behind.
    fn run_image(&self, image: &ImageConfiguration, settings: ContainerSettings) -> Run {
        let id = self.id();
        let bundle = self.bundle(&id, image, settings);
        let (out, err) = self.outputs(&id);
        let mut c = self.runtime.create(&id, &bundle, &out, &err).unwrap();
        assert_eq!(c.status().unwrap(), ContainerStatus::Created);
        c.start().unwrap();
        let status = c.wait().unwrap();
        assert_eq!(c.status().unwrap(), ContainerStatus::Stopped);
        c.delete(false).unwrap();
        self.assert_gone(&id);
        Run {
            status,
            stdout: self.read(&id, "out"),
            stderr: self.read(&id, "err"),
        }
    }

    fn run(&self, settings: ContainerSettings) -> Run {
        self.run_image(&image(json!({})), settings)
    }

    fn assert_gone(&self, id: &str) {
        assert!(
            self.runtime.list().unwrap().is_empty(),
            "state left: {:?}",
            self.runtime.list()
        );
        let leaf = self.runtime.cgroup_path_for(id);
        assert_eq!(
            v1_leaf_dirs(&leaf),
            Vec::<PathBuf>::new(),
            "cgroup left behind"
        );
    }
}

fn cap_eff(stdout: &str) -> u64 {
    let line = stdout.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

// capability(7) numbers.
const CAP_CHOWN: u32 = 0;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;

#[test]
fn echo_writes_stdout_and_exits_zero() {
    let Some(fx) = fixture("echo") else { return };
    let run = fx.run(ContainerSettings {
        args: Some(vec!["/bin/echo".into(), "hello".into()]),
        ..ContainerSettings::default()
    });
    assert_eq!(run.status, ExitStatus::Exited(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "hello\n");
    assert_eq!(run.stderr, "");
}

#[test]
fn exit_code_is_returned() {
    let Some(fx) = fixture("exit") else { return };
    let run = fx.run(sh("echo oops >&2; exit 7"));
    assert_eq!(run.status, ExitStatus::Exited(7));
    assert_eq!(run.stderr, "oops\n");
}

#[test]
fn signals_kill_and_are_reported() {
    let Some(fx) = fixture("signal") else { return };
    // SIGTERM to a pid-namespace init without a handler is ignored (pid_namespaces(7)), as
    // with `docker stop` of a bare `sleep`; in the host pid namespace it kills.
    let settings = ContainerSettings {
        args: Some(vec!["/bin/sleep".into(), "100".into()]),
        namespaces: Namespaces {
            pid: Namespace::Host,
            ..Namespaces::default()
        },
        // libcontainer 0.7 mis-resolves its v1 cgroup bind mounts without a private pid
        // namespace when our own cgroup is nested; this test does not need them.
        mounts: vec![MountSpec::Tmpfs {
            destination: "/sys/fs/cgroup".into(),
            size_bytes: None,
            mode: None,
        }],
        ..ContainerSettings::default()
    };
    let id = fx.id();
    let bundle = fx.bundle(&id, &image(json!({})), settings);
    let (out, err) = fx.outputs(&id);
    let mut c = fx.runtime.create(&id, &bundle, &out, &err).unwrap();
    c.start().unwrap();
    assert_eq!(c.status().unwrap(), ContainerStatus::Running);
    assert_eq!(c.try_wait().unwrap(), None);
    c.signal(Signal::SIGTERM).unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Signaled(Signal::SIGTERM));
    assert!(matches!(
        c.signal(Signal::SIGTERM),
        Err(RuntimeError::NotRunning(_))
    ));
    c.delete(false).unwrap();
    fx.assert_gone(&id);

    // SIGKILL reaches init in its own pid namespace.
    let id = fx.id();
    let bundle = fx.bundle(&id, &image(json!({})), sh("sleep 100"));
    let (out, err) = fx.outputs(&id);
    let mut c = fx.runtime.create(&id, &bundle, &out, &err).unwrap();
    c.start().unwrap();
    c.signal(Signal::SIGKILL).unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Signaled(Signal::SIGKILL));
    c.delete(false).unwrap();
    fx.assert_gone(&id);
}

#[test]
fn image_env_workdir_and_user_apply() {
    let Some(fx) = fixture("image") else { return };
    let img = image(json!({
        "Env": ["FOO=from-image", "BAR=image"],
        "WorkingDir": "/tmp",
        "User": "nobody",
        "Cmd": ["/bin/sh", "-c", "id -u; id -g; pwd; echo $FOO $BAR; echo $HOME; env | grep -c ^PATH="],
    }));
    let settings = ContainerSettings {
        env: [("BAR".to_string(), "container".to_string())].into(),
        ..ContainerSettings::default()
    };
    let run = fx.run_image(&img, settings);
    assert_eq!(run.status, ExitStatus::Exited(0), "stderr: {}", run.stderr);
    assert_eq!(
        run.stdout,
        "65534\n65534\n/tmp\nfrom-image container\n/home\n1\n"
    );

    let numeric = image(json!({"User": "65534:0", "Cmd": ["/bin/sh", "-c", "id -u; id -g"]}));
    let run = fx.run_image(&numeric, ContainerSettings::default());
    assert_eq!(run.stdout, "65534\n0\n");
}

#[test]
fn hostname_and_private_pid_namespace() {
    let Some(fx) = fixture("uts-pid") else { return };
    let run = fx.run(ContainerSettings {
        hostname: Some("cairn-task".into()),
        ..sh("hostname; echo $$; ps -o pid | wc -l")
    });
    assert_eq!(run.status, ExitStatus::Exited(0), "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "cairn-task");
    assert_eq!(lines[1], "1", "the command is pid 1 of its own namespace");
}

#[test]
fn capabilities_default_and_dropped() {
    let Some(fx) = fixture("caps") else { return };
    let run = fx.run(sh("grep CapEff /proc/self/status"));
    let eff = cap_eff(&run.stdout);
    assert_ne!(
        eff & (1 << CAP_NET_RAW),
        0,
        "NET_RAW is in Docker's default set"
    );
    assert_ne!(eff & (1 << CAP_CHOWN), 0);
    assert_eq!(eff & (1 << CAP_SYS_ADMIN), 0, "SYS_ADMIN is not");

    let run = fx.run(ContainerSettings {
        capabilities: CapabilityChanges {
            add: vec![],
            drop: vec!["NET_RAW".into()],
        },
        ..sh("grep CapEff /proc/self/status")
    });
    let eff = cap_eff(&run.stdout);
    assert_eq!(eff & (1 << CAP_NET_RAW), 0, "dropped NET_RAW is absent");
    assert_ne!(eff & (1 << CAP_CHOWN), 0);
}

#[test]
fn masked_and_readonly_paths() {
    let Some(fx) = fixture("masked") else { return };
    assert!(
        !fs::read("/proc/timer_list").unwrap().is_empty(),
        "host timer_list has content"
    );
    let run = fx.run(sh(
        "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; echo 1 > /proc/sys/vm/drop_caches",
    ));
    assert_ne!(run.status, ExitStatus::Exited(0));
    assert_eq!(run.stdout, "0\n0\n", "masked paths read empty");
    assert!(
        run.stderr.contains("Read-only file system"),
        "stderr: {}",
        run.stderr
    );
}

#[test]
fn seccomp_denies_blocked_syscalls() {
    let Some(fx) = fixture("seccomp") else { return };
    // unshare(CLONE_NEWUSER) needs no capability, so only the seccomp profile stops it.
    let run = fx.run(sh("unshare -U true"));
    assert_eq!(
        run.status,
        ExitStatus::Exited(1),
        "stdout: {} stderr: {}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.contains("Operation not permitted"),
        "stderr: {}",
        run.stderr
    );

    let run = fx.run(ContainerSettings {
        seccomp: Seccomp::Unconfined,
        ..sh("unshare -U true")
    });
    assert_eq!(
        run.status,
        ExitStatus::Exited(0),
        "unconfined: stderr {}",
        run.stderr
    );
}

#[test]
fn cgroup_is_below_ours_with_limits_and_removed_on_delete() {
    let Some(fx) = fixture("cgroup") else { return };
    let id = fx.id();
    let settings = ContainerSettings {
        resources: CgroupResources {
            memory_limit_bytes: Some(64 << 20),
            pids_limit: Some(50),
            cpu_shares: Some(512),
            ..CgroupResources::default()
        },
        ..sh("cat /proc/self/cgroup; sleep 100")
    };
    let bundle = fx.bundle(&id, &image(json!({})), settings);
    let (out, err) = fx.outputs(&id);
    let mut c = fx.runtime.create(&id, &bundle, &out, &err).unwrap();
    c.start().unwrap();
    let leaf = fx.runtime.cgroup_path_for(&id);
    assert!(leaf.starts_with(&fx.cgroups.path));
    assert!(leaf.starts_with(own_cgroup("memory").unwrap()));
    let memory = Path::new("/sys/fs/cgroup/memory").join(leaf.strip_prefix("/").unwrap());
    let pids = Path::new("/sys/fs/cgroup/pids").join(leaf.strip_prefix("/").unwrap());
    let cpu = Path::new("/sys/fs/cgroup/cpu").join(leaf.strip_prefix("/").unwrap());
    let pid = c.pid().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(5), || {
        fs::read_to_string(memory.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .any(|l| l == pid)
    }));
    assert_eq!(
        fs::read_to_string(memory.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        "67108864"
    );
    assert_eq!(
        fs::read_to_string(pids.join("pids.max")).unwrap().trim(),
        "50"
    );
    assert_eq!(
        fs::read_to_string(cpu.join("cpu.shares")).unwrap().trim(),
        "512"
    );
    assert!(wait_until(Duration::from_secs(5), || fx
        .read(&id, "out")
        .contains("memory:")));
    assert!(fx
        .read(&id, "out")
        .contains(&format!("memory:{}", leaf.display())));

    // A forced delete kills what runs, reaps it, and removes the state and cgroup.
    assert_eq!(c.status().unwrap(), ContainerStatus::Running);
    c.delete(true).unwrap();
    fx.assert_gone(&id);
    assert!(!memory.exists() && !pids.exists() && !cpu.exists());
    assert!(
        !Path::new("/proc").join(&pid).exists(),
        "the init is gone and reaped"
    );
}

#[test]
fn bundles_without_a_cgroup_below_the_parent_are_refused() {
    let Some(fx) = fixture("refuse") else { return };
    let id = fx.id();
    let spec = build_spec(&image(json!({})), &fx.rootfs, &sh("true")).unwrap();
    let bundle = fx.dir.path().join("bundles").join(&id);
    write_bundle(&bundle, &spec).unwrap();
    let (out, err) = fx.outputs(&id);
    let e = fx.runtime.create(&id, &bundle, &out, &err).unwrap_err();
    assert!(matches!(e, RuntimeError::NoCgroupsPath(_)), "{e}");

    let outside = ContainerSettings {
        cgroups_path: Some("/elsewhere/x".into()),
        ..sh("true")
    };
    write_bundle(
        &bundle,
        &build_spec(&image(json!({})), &fx.rootfs, &outside).unwrap(),
    )
    .unwrap();
    let e = fx.runtime.create(&id, &bundle, &out, &err).unwrap_err();
    assert!(matches!(e, RuntimeError::CgroupOutsideParent { .. }), "{e}");
    fx.assert_gone(&id);

    // A command that does not exist fails at create or start, leaving nothing behind.
    let bundle = fx.bundle(
        &id,
        &image(json!({})),
        ContainerSettings {
            args: Some(vec!["/no/such/program".into()]),
            ..ContainerSettings::default()
        },
    );
    match fx.runtime.create(&id, &bundle, &out, &err) {
        Err(_) => {}
        Ok(mut c) => {
            let started = c.start();
            if started.is_ok() {
                assert_ne!(c.wait().unwrap(), ExitStatus::Exited(0));
            }
            c.delete(true).unwrap();
        }
    }
    fx.assert_gone(&id);
}
