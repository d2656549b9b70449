//! The containerizer in the cgroup v2 VM (issue 5: a task over its memory limit ends
//! TASK_FAILED with REASON_CONTAINER_LIMITATION_MEMORY on v1, which `containerizer.rs` shows
//! on the host, and on v2): `scripts/vm-test -p cairn-agent --test containerizer_vm`. On the
//! host every test here prints why it skips.
//!
//! The guest has no image tools, so tasks run without an image, on the guest's own root
//! filesystem (busybox) read-only, as Mesos command tasks do. `scripts/vm-test` copies
//! `cairn-supervisor` next to the test binary (the line below), where the containerizer
//! looks for it by default.
#![allow(clippy::unwrap_used)]

// vm-files: cairn-supervisor

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_agent::containerizer::{Containerizer, ContainerizerConfig, LaunchRequest, TaskCommand};
use cairn_api::{Reason, Resources, TaskState};
use cairn_testsupport::cgroups::CgroupParent;
use cairn_testsupport::vm::in_vm;

fn require_vm(test: &str) -> bool {
    if !in_vm() {
        eprintln!(
            "skipping {test}: runs in the cgroup v2 VM \
             (scripts/vm-test -p cairn-agent --test containerizer_vm)"
        );
    }
    in_vm()
}

fn request(task: &str, mem_mb: f64, script: &str) -> LaunchRequest {
    let resources = Resources::new()
        .with_scalar("cpus", 0.5)
        .unwrap()
        .with_scalar("mem", mem_mb)
        .unwrap();
    let mut r = LaunchRequest::new(task, resources);
    r.image = None;
    r.command = Some(TaskCommand::Shell(script.to_string()));
    r
}

#[test]
fn tasks_run_and_a_task_over_its_memory_limit_fails_with_the_memory_reason() {
    if !require_vm("containerizer_vm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cgroups = CgroupParent::new("containerizer-vm");
    let mut config = ContainerizerConfig::new(dir.path().join("work"));
    assert!(
        config.supervisor.exists(),
        "{:?} missing",
        config.supervisor
    );
    config.cgroups.parent = cgroups.path.to_string_lossy().into_owned();
    let (c, _) = Containerizer::start(config).unwrap();

    let ok = c.launch(&request("ok", 32.0, "echo hello from v2; exit 3"));
    let t = c.wait(&ok).unwrap();
    let log = fs::read_to_string(c.layout().sandbox(&ok).join("supervisor.log"));
    assert_eq!(
        (t.state, t.reason),
        (TaskState::Failed, None),
        "{t:?}\nsupervisor.log: {log:?}"
    );
    assert_eq!(t.exit_code(), 3, "{t:?}");
    let out = fs::read_to_string(c.layout().sandbox(&ok).join("stdout")).unwrap();
    assert_eq!(out, "hello from v2\n");

    let launched = Instant::now();
    let hog = c.launch(&request(
        "hog",
        32.0,
        "dd if=/dev/zero of=/dev/null bs=100M count=1; echo survived; sleep 30",
    ));
    let t = c.wait(&hog).unwrap();
    assert_eq!(
        (t.state, t.reason),
        (TaskState::Failed, Some(Reason::ContainerLimitationMemory)),
        "{t:?}"
    );
    assert!(t.message.contains("memory"), "{t:?}");
    assert!(
        launched.elapsed() < Duration::from_secs(25),
        "ended by its command, not by the limitation: {t:?}"
    );
    for id in [&ok, &hog] {
        c.forget(id).unwrap();
    }
    drop(c);
    assert!(cgroups.leftovers().is_empty(), "{:?}", cgroups.leftovers());
    assert!(!Path::new("/cairn-should-not-exist").exists());
}
