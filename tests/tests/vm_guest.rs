//! Checks of the cgroup v2 VM from inside it: run them with
//! `scripts/vm-test -p cairn-testsupport --test vm_guest`. On the host they print a skip.

use std::fs;
use std::path::Path;

use cairn_testsupport::vm::in_vm;

const CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "io"];

fn in_guest(test: &str) -> bool {
    in_vm()
        || {
            eprintln!("skipping {test}: runs inside the VM (scripts/vm-test -p cairn-testsupport --test vm_guest)");
            false
        }
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn has_all_controllers(list: &str) -> bool {
    CONTROLLERS
        .iter()
        .all(|c| list.split_whitespace().any(|have| have == *c))
}

#[test]
fn vm_guest_cgroup2_is_mounted_with_controllers_enabled() {
    if !in_guest("vm_guest_cgroup2_is_mounted_with_controllers_enabled") {
        return;
    }
    let mounts = read("/proc/self/mounts");
    let cgroup2 = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|f| f.get(1) == Some(&"/sys/fs/cgroup") && f.get(2) == Some(&"cgroup2"));
    assert!(cgroup2, "no cgroup2 at /sys/fs/cgroup in\n{mounts}");
    let available = read("/sys/fs/cgroup/cgroup.controllers");
    assert!(
        has_all_controllers(&available),
        "cgroup.controllers: {available}"
    );
    let enabled = read("/sys/fs/cgroup/cgroup.subtree_control");
    assert!(
        has_all_controllers(&enabled),
        "cgroup.subtree_control: {enabled}"
    );
}

#[test]
fn vm_guest_child_cgroup_takes_memory_max() {
    if !in_guest("vm_guest_child_cgroup_takes_memory_max") {
        return;
    }
    let child = Path::new("/sys/fs/cgroup/cairn-vm-guest-test");
    fs::create_dir(child).expect("create a child cgroup");
    let controllers = read(child.join("cgroup.controllers"));
    assert!(
        has_all_controllers(&controllers),
        "child's cgroup.controllers: {controllers}"
    );
    fs::write(child.join("memory.max"), "33554432").expect("write memory.max");
    assert_eq!(read(child.join("memory.max")).trim(), "33554432");
    fs::remove_dir(child).expect("remove the child cgroup");
    assert!(!child.exists());
}
