//! The README's quickstart command, `scripts/demo`, run as the CI machine runs it (as root,
//! from the repository's root, output to files), and its output checked: the local cluster
//! comes up, the busybox image's `echo` prints, the memory hog is reported as killed for its
//! memory limit with exit code 137, and the cluster's state directory and cgroups are gone
//! afterwards.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_testsupport::require_root;

/// Generous: on a cold machine the demo builds the workspace's binaries first.
const DEADLINE: Duration = Duration::from_secs(30 * 60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `cairn-dev-*` cgroup directory in any hierarchy.
fn dev_cgroups() -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with("cairn-dev-") {
                found.insert(e.path());
            }
            stack.push(e.path());
        }
    }
    found
}

#[test]
fn readme_demo_runs_a_busybox_task_and_reports_the_memory_limit() {
    if !require_root("readme_demo_runs_a_busybox_task_and_reports_the_memory_limit") {
        return;
    }
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let quickstart = readme.split("## Layout").next().unwrap();
    assert!(
        quickstart.contains("\nscripts/demo "),
        "the README's quickstart no longer starts with scripts/demo:\n{quickstart}"
    );

    let cgroups_before = dev_cgroups();
    let out = tempfile::tempdir().unwrap();
    let (stdout_path, stderr_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new(root.join("scripts/demo"))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        // Its own process group, so a hung demo is stopped with everything it started.
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            // SIGINT first: cairn dev cleans up on it; SIGKILL whatever is left.
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT);
            std::thread::sleep(Duration::from_secs(15));
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let shown = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    let status =
        status.unwrap_or_else(|| panic!("scripts/demo still running after {DEADLINE:?}\n{shown}"));
    assert!(status.success(), "scripts/demo failed: {status}\n{shown}");

    // The cluster came up and said where.
    assert!(
        stdout.contains("cairn dev: a local cluster is running"),
        "{shown}"
    );
    assert!(stdout.contains("  master: http://127.0.0.1:"), "{shown}");
    // The image task's output, and its exit code.
    assert!(
        stdout.contains("\nhello from cairn\n"),
        "no echo output\n{shown}"
    );
    assert!(stdout.contains("(exit code 0)"), "{shown}");
    // The memory hog: the reason and the exit code.
    assert!(
        stderr.contains("killed: memory limit 64 MiB exceeded"),
        "no memory-limit reason\n{shown}"
    );
    assert!(stdout.contains("(exit code 137)"), "{shown}");
    assert!(
        stdout.contains("FAILED"),
        "cairn ps -a shows no FAILED task\n{shown}"
    );
    // Stopped and cleaned up.
    assert!(
        stdout.contains("cairn dev: stopped; tasks killed, cgroups removed, state removed"),
        "{shown}"
    );
    assert!(stdout.trim_end().ends_with("demo: ok"), "{shown}");
    let state = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("state:"))
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no state line\n{shown}"));
    assert!(
        !Path::new(state).exists(),
        "the cluster's state directory {state} is still there"
    );
    let left: Vec<_> = dev_cgroups().difference(&cgroups_before).cloned().collect();
    assert!(left.is_empty(), "cgroups left by cairn dev: {left:?}");
}
