//! The containerizer against real containers and real cgroups (host, cgroup v1). Needs root;
//! skips with a printed reason otherwise.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cairn_agent::containerizer::{
    Containerizer, ContainerizerConfig, ContainerizerError, LaunchRequest, TaskCommand, Termination,
};
use cairn_api::{Reason, Resources, TaskState};
use cairn_testsupport::cgroups::CgroupParent;
use cairn_testsupport::images::TestImages;
use cairn_testsupport::require_root;

/// One test at a time: each records which cgroup ancestors it had to create (ours differ per
/// hierarchy, so libcontainer creates them in the others) and removes them afterwards, which
/// only works when no other test shares them meanwhile.
static SERIAL: Mutex<()> = Mutex::new(());

struct Fixture {
    // Field order is drop order: cgroups before the work directory, the lock last.
    cgroups: CgroupParent,
    config: ContainerizerConfig,
    image: String,
    dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

fn fixture(test: &str) -> Option<Fixture> {
    if !require_root(test) {
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let images = TestImages::get();
    let dir = tempfile::Builder::new()
        .prefix(&format!("cairn-agent-{test}-"))
        .tempdir()
        .unwrap();
    let cgroups = CgroupParent::new(test);
    let mut config = ContainerizerConfig::new(dir.path().join("work"));
    config.supervisor = PathBuf::from(env!("CARGO_BIN_EXE_cairn-supervisor"));
    config.cgroups.parent = cgroups.path.to_string_lossy().into_owned();
    let store = cairn_oci::store::Store::open(dir.path().join("work/images")).unwrap();
    let imported =
        cairn_oci::import::import_docker_archive(&store, &images.docker_archive, None).unwrap();
    let image = imported[0].reference.to_string();
    Some(Fixture {
        cgroups,
        config,
        image,
        dir,
        _serial: serial,
    })
}

impl Fixture {
    fn start(&self) -> (Containerizer, cairn_agent::containerizer::Recovery) {
        Containerizer::start(self.config.clone()).unwrap()
    }

    fn request(&self, task: &str, mem_mb: f64, command: Option<TaskCommand>) -> LaunchRequest {
        let resources = Resources::new()
            .with_scalar("cpus", 0.1)
            .unwrap()
            .with_scalar("mem", mem_mb)
            .unwrap();
        let mut r = LaunchRequest::new(task, resources);
        r.image = Some(self.image.clone());
        r.command = command;
        r
    }

    /// Nothing left behind: no mounts below the work dir, no container cgroups, no runtime
    /// state.
    fn assert_clean(&self) {
        let work = self.dir.path().to_string_lossy().into_owned();
        let mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&work))
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        assert!(
            self.cgroups.leftovers().is_empty(),
            "cgroups left: {:?}",
            self.cgroups.leftovers()
        );
        let runtime = self.dir.path().join("work/runtime");
        let left: Vec<_> = fs::read_dir(&runtime)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "runtime state left: {left:?}");
        let bundles: Vec<_> = fs::read_dir(self.dir.path().join("work/containers"))
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(bundles.is_empty(), "bundles left: {bundles:?}");
    }
}

fn shell(cmd: &str) -> Option<TaskCommand> {
    Some(TaskCommand::Shell(cmd.to_string()))
}

fn stdout_of(c: &Containerizer, id: &cairn_api::ContainerId) -> String {
    fs::read_to_string(c.layout().sandbox(id).join("stdout")).unwrap_or_default()
}

fn assert_state(t: &Termination, state: TaskState, reason: Option<Reason>) {
    assert_eq!((t.state, t.reason), (state, reason), "{t:?}");
}

#[test]
fn twenty_tasks_finish_with_their_exit_codes_and_stdout_needs_root() {
    let Some(fx) = fixture("twenty") else { return };
    let (c, _) = fx.start();
    let ids: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (c, fx) = (&c, &fx);
                s.spawn(move || {
                    (0..5)
                        .map(|k| {
                            let i = t * 5 + k;
                            let cmd = format!(
                                "echo task-$MESOS_TASK_ID in $MESOS_SANDBOX; exit {}",
                                i % 3
                            );
                            let req = fx.request(&format!("t{i}"), 32.0, shell(&cmd));
                            (i, c.launch(&req))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(ids.len(), 20);
    for (i, id) in &ids {
        let t = c.wait(id).unwrap();
        let code = i % 3;
        if code == 0 {
            assert_state(&t, TaskState::Finished, None);
        } else {
            assert_state(&t, TaskState::Failed, None);
            assert!(t.message.contains(&format!("status {code}")), "{t:?}");
        }
        assert_eq!(t.exit_code(), code);
        assert_eq!(
            stdout_of(&c, id),
            format!("task-t{i} in /mnt/mesos/sandbox\n"),
            "task {i}"
        );
    }
    fx.assert_clean();
}

#[test]
fn a_task_over_its_memory_limit_fails_with_the_memory_reason_needs_root() {
    let Some(fx) = fixture("oom") else { return };
    let (c, _) = fx.start();
    // On v1 the OOM killer takes only dd and the shell would sleep on: the task ends because
    // the limitation destroys the container (the OOM event, or the periodic watch), not
    // because its command finished.
    let req = fx.request(
        "hog",
        32.0,
        shell("dd if=/dev/zero of=/dev/null bs=100M count=1; echo survived; sleep 30"),
    );
    let launched = Instant::now();
    let id = c.launch(&req);
    let t = c.wait(&id).unwrap();
    eprintln!("oom: launch to end in {:?}", launched.elapsed());
    assert_state(
        &t,
        TaskState::Failed,
        Some(Reason::ContainerLimitationMemory),
    );
    assert!(t.message.contains("memory"), "{t:?}");
    assert!(
        launched.elapsed() < Duration::from_secs(20),
        "ended by its command, not by the limitation: {t:?}"
    );
    fx.assert_clean();
}

#[test]
fn a_task_over_its_disk_limit_is_killed_with_the_disk_reason_needs_root() {
    let Some(mut fx) = fixture("du") else { return };
    fx.config.isolation.push("disk/du".into());
    fx.config.disk.watch_interval_secs = 1;
    let (c, _) = fx.start();
    let mut req = fx.request(
        "filler",
        64.0,
        shell("dd if=/dev/zero of=$MESOS_SANDBOX/fill bs=1M count=40; sleep 30"),
    );
    req.resources = req.resources.with_scalar("disk", 20.0).unwrap();
    let launched = Instant::now();
    let id = c.launch(&req);
    let t = c.wait(&id).unwrap();
    eprintln!("du: launch to end in {:?}", launched.elapsed());
    assert_state(&t, TaskState::Failed, Some(Reason::ContainerLimitationDisk));
    // Usage and limit: "disk limit exceeded: <used> of 20971520 bytes used".
    assert!(t.message.contains("disk limit exceeded"), "{t:?}");
    assert!(t.message.contains("of 20971520 bytes"), "{t:?}");
    let used: u64 = t
        .message
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    assert!(used > 20 * 1024 * 1024, "{t:?}");
    // Killed (SIGKILL), not ended by its command.
    assert_eq!(t.exit_code(), 128 + 9, "{t:?}");
    assert!(launched.elapsed() < Duration::from_secs(25), "{t:?}");
    // The sandbox stays for the operator; only the container is gone.
    assert!(c.layout().sandbox(&id).join("fill").exists());
    fx.assert_clean();
}

#[test]
fn kill_sends_term_then_kill_after_the_grace_period_needs_root() {
    let Some(fx) = fixture("kill") else { return };
    let (c, _) = fx.start();
    // Handles SIGTERM: ends at once, well within the grace.
    let polite = c.launch(&fx.request(
        "polite",
        32.0,
        shell("trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.05; done"),
    ));
    // pid 1 without a handler ignores SIGTERM: only SIGKILL ends it.
    let stubborn = c.launch(&fx.request(
        "stubborn",
        32.0,
        Some(TaskCommand::Argv(vec!["sleep".into(), "1000".into()])),
    ));
    let ready = Instant::now();
    while !stdout_of(&c, &polite).contains("ready") {
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "polite never ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    c.kill(&polite, Duration::from_secs(20)).unwrap();
    c.kill(&stubborn, Duration::from_millis(700)).unwrap();
    let t = c.wait(&polite).unwrap();
    assert_state(&t, TaskState::Killed, None);
    assert_eq!(t.exit_code(), 3);
    assert!(stdout_of(&c, &polite).contains("got-term"));
    let t = c.wait(&stubborn).unwrap();
    assert_state(&t, TaskState::Killed, None);
    assert_eq!(t.exit_code(), 128 + 9);
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert!(started.elapsed() < Duration::from_secs(15));
    fx.assert_clean();
}

#[test]
fn unknown_images_and_missing_commands_fail_the_launch_needs_root() {
    let Some(fx) = fixture("badlaunch") else {
        return;
    };
    let (c, _) = fx.start();
    let mut req = fx.request("noimage", 32.0, shell("true"));
    req.image = Some("cairn/does-not-exist:1".into());
    let t = c.wait(&c.launch(&req)).unwrap();
    assert_state(&t, TaskState::Failed, Some(Reason::ContainerLaunchFailed));
    assert!(t.message.contains("cairn/does-not-exist:1"), "{t:?}");

    let req = fx.request(
        "nocmd",
        32.0,
        Some(TaskCommand::Argv(vec!["no-such-command".into()])),
    );
    let t = c.wait(&c.launch(&req)).unwrap();
    assert_state(&t, TaskState::Failed, Some(Reason::ContainerLaunchFailed));
    assert!(t.message.contains("\"no-such-command\" not found"), "{t:?}");

    let mut req = fx.request("badref", 32.0, shell("true"));
    req.image = Some("UPPER/Case::bad".into());
    let t = c.wait(&c.launch(&req)).unwrap();
    assert_state(&t, TaskState::Error, Some(Reason::TaskInvalid));
    fx.assert_clean();
}

#[test]
fn tasks_without_an_image_run_on_the_host_filesystem_read_only_needs_root() {
    let Some(fx) = fixture("host") else { return };
    let (c, _) = fx.start();
    let mut req = fx.request(
        "host",
        32.0,
        shell("echo $PWD; echo $MESOS_SANDBOX; touch /cairn-should-not-exist 2>/dev/null || echo read-only; echo hi > out"),
    );
    req.image = None;
    let id = c.launch(&req);
    let t = c.wait(&id).unwrap();
    assert_state(&t, TaskState::Finished, None);
    let sandbox = c.layout().sandbox(&id);
    let s = sandbox.to_string_lossy();
    assert_eq!(stdout_of(&c, &id), format!("{s}\n{s}\nread-only\n"));
    assert_eq!(fs::read_to_string(sandbox.join("out")).unwrap(), "hi\n");
    assert!(!Path::new("/cairn-should-not-exist").exists());
    fx.assert_clean();
}

#[test]
fn recovery_readopts_running_containers_and_reports_exits_needs_root() {
    let Some(fx) = fixture("recover") else { return };
    let (c, _) = fx.start();
    let sleepers: Vec<_> = (0..3)
        .map(|i| {
            c.launch(&fx.request(
                &format!("sleeper{i}"),
                32.0,
                Some(TaskCommand::Argv(vec!["sleep".into(), "1000".into()])),
            ))
        })
        .collect();
    let exiters: Vec<_> = (0..2)
        .map(|i| {
            c.launch(&fx.request(
                &format!("exiter{i}"),
                32.0,
                shell(&format!(
                    "while [ ! -e $MESOS_SANDBOX/go ]; do sleep 0.05; done; echo bye; exit {}",
                    7 + i
                )),
            ))
        })
        .collect();
    let pids: Vec<u32> = sleepers
        .iter()
        .map(|id| c.record(id).unwrap().init.unwrap().pid)
        .collect();
    let layout = c.layout().clone();
    // One agent per work directory.
    assert!(matches!(
        Containerizer::start(fx.config.clone()),
        Err(ContainerizerError::Locked(_))
    ));
    // The agent dies: supervisors and containers keep running.
    drop(c);
    for id in &exiters {
        fs::write(layout.sandbox(id).join("go"), b"").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exiters.iter().all(|id| layout.exit_file(id).exists()) {
        assert!(Instant::now() < deadline, "exiters never exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A corrupt checkpoint of some other container is quarantined, not fatal.
    let corrupt = layout.containers_meta().join("c0ffee");
    fs::create_dir_all(&corrupt).unwrap();
    fs::write(corrupt.join("container.json"), b"{\"version\": 1, \"contai").unwrap();

    let (c, recovery) = fx.start();
    let mut adopted: Vec<_> = recovery.adopted.iter().map(|(id, _)| id.clone()).collect();
    adopted.sort();
    let mut expected = sleepers.clone();
    expected.sort();
    assert_eq!(adopted, expected);
    for (id, pid) in sleepers.iter().zip(&pids) {
        assert_eq!(c.record(id).unwrap().init.unwrap().pid, *pid);
        assert!(Path::new(&format!("/proc/{pid}")).exists());
    }
    assert_eq!(recovery.terminated.len(), 2, "{:?}", recovery.terminated);
    for (i, id) in exiters.iter().enumerate() {
        let t = c.termination(id).unwrap();
        assert_state(&t, TaskState::Failed, None);
        assert_eq!(t.exit_code(), 7 + i32::try_from(i).unwrap());
        assert_eq!(stdout_of(&c, id), "bye\n");
    }
    assert_eq!(recovery.quarantined.len(), 1);
    assert!(recovery.quarantined[0].1.contains("c0ffee/container.json"));
    // The re-adopted ones are still managed: kill them.
    for id in &sleepers {
        c.kill(id, Duration::from_millis(100)).unwrap();
    }
    for id in &sleepers {
        assert_state(&c.wait(id).unwrap(), TaskState::Killed, None);
    }
    fx.assert_clean();
}

/// The mount points below `under` in `/proc/<pid>/mountinfo`, with their filesystem types.
fn mounts_below(pid: &str, under: &Path) -> Vec<(String, String)> {
    let under = under.to_string_lossy().into_owned();
    fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let target = l.split_whitespace().nth(4)?;
            let fstype = l.split(" - ").nth(1)?.split_whitespace().next()?;
            target
                .starts_with(&under)
                .then(|| (target.to_string(), fstype.to_string()))
        })
        .collect()
}

#[test]
fn root_filesystems_are_mounted_only_in_their_supervisors_namespace_needs_root() {
    let Some(fx) = fixture("mountns") else { return };
    let (c, _) = fx.start();
    let image_task = c.launch(&fx.request("img", 32.0, shell("sleep 600")));
    let mut host = fx.request("host", 32.0, shell("sleep 600"));
    host.image = None;
    let host_task = c.launch(&host);
    let work = fx.dir.path();
    for (id, fstype) in [(&image_task, "overlay"), (&host_task, "ext4")] {
        let record = c.record(id).unwrap();
        assert_eq!(
            record.state,
            cairn_agent::containerizer::ContainerState::Running
        );
        let supervisor = record.supervisor.unwrap().pid.to_string();
        let rootfs = record.bundle.join("rootfs").to_string_lossy().into_owned();
        let seen = mounts_below(&supervisor, work);
        assert!(
            seen.iter().any(|(t, _)| *t == rootfs),
            "{id:?}: the supervisor's namespace lacks {rootfs}: {seen:?}"
        );
        if fstype == "overlay" {
            assert!(seen.contains(&(rootfs.clone(), fstype.into())), "{seen:?}");
        }
    }
    assert_eq!(
        mounts_below("self", work),
        Vec::<(String, String)>::new(),
        "the agent's mount namespace got a container's mount"
    );
    for id in [&image_task, &host_task] {
        c.kill(id, std::time::Duration::from_millis(100)).unwrap();
        assert_state(&c.wait(id).unwrap(), TaskState::Killed, None);
        c.forget(id).unwrap();
    }
    fx.assert_clean();
}

#[test]
fn a_destroy_step_that_fails_is_reported_and_the_task_still_ends_needs_root() {
    let Some(fx) = fixture("destroyfail") else {
        return;
    };
    if !cairn_testsupport::require_command("destroyfail", "chattr") {
        return;
    }
    let (c, _) = fx.start();
    let events = c.subscribe();
    let id = c.launch(&fx.request("stuck", 32.0, shell("sleep 1")));
    // An immutable file in the bundle: removing the bundle fails, even for root.
    let bundle = c.record(&id).unwrap().bundle;
    let stuck = bundle.join("stuck");
    fs::write(&stuck, b"").unwrap();
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&stuck)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+i") {
        println!("destroyfail: skipped (this filesystem has no immutable files)");
        let _ = c.kill(&id, Duration::from_millis(100));
        let _ = c.wait(&id);
        return;
    }
    let t = c.wait(&id).unwrap();
    assert!(chattr("-i"));
    assert_state(&t, TaskState::Finished, None);
    let failure = events.try_iter().find_map(|e| match e {
        cairn_agent::containerizer::Event::DestroyFailed {
            container, message, ..
        } if container == id => Some(message),
        _ => None,
    });
    let failure = failure.expect("no DestroyFailed event");
    assert!(failure.contains("rootfs teardown"), "{failure}");
    assert!(failure.contains(&bundle.display().to_string()), "{failure}");
    fs::remove_dir_all(&bundle).unwrap();
    c.forget(&id).unwrap();
    fx.assert_clean();
}
