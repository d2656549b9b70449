//! The cgroup isolators on cgroup v2, inside the QEMU VM (`scripts/vm-test -p cairn-isolators --test cgroup_v2`), with real
//! processes. Needs root; each scenario works below the test process's own cgroups and
//! removes everything it made. The same scenarios run on the host (v1) in `cgroups_host.rs`. Outside the VM
//! these tests print why they skip and pass: `scripts/test` boots them in the VM.

mod cgroups_support;

use cairn_isolators::cgroups::CgroupVersion;
use cgroups_support::Harness;

/// Inside the VM (its `/init` sets `CAIRN_IN_VM`, as `cairn_testsupport::vm::in_vm` reads).
fn in_vm() -> bool {
    std::env::var_os("CAIRN_IN_VM").is_some()
}

fn harness(test: &str) -> Option<Harness> {
    if !in_vm() {
        eprintln!("skipping {test}: runs in the cgroup v2 VM (scripts/vm-test -p cairn-isolators --test cgroup_v2)");
        return None;
    }
    let h = Harness::new(test);
    assert_eq!(
        h.version(),
        CgroupVersion::V2,
        "the VM mounts cgroup2 alone"
    );
    Some(h)
}

#[test]
fn vm_v2_memory_limit_kills_and_reports() {
    if let Some(mut h) = harness("vm_v2_memory_limit_kills_and_reports") {
        cgroups_support::memory_limit_kills_and_reports(&mut h);
    }
}

#[test]
fn vm_v2_cpu_hard_limit_throttles() {
    if let Some(mut h) = harness("vm_v2_cpu_hard_limit_throttles") {
        cgroups_support::cpu_hard_limit_throttles(&mut h);
    }
}

#[test]
fn vm_v2_fork_bomb_stops_at_pids_limit() {
    if let Some(mut h) = harness("vm_v2_fork_bomb_stops_at_pids_limit") {
        cgroups_support::fork_bomb_stops_at_pids_limit(&mut h);
    }
}

#[test]
fn vm_v2_usage_matches_the_workload() {
    if let Some(mut h) = harness("vm_v2_usage_matches_the_workload") {
        cgroups_support::usage_matches_the_workload(&mut h);
    }
}

#[test]
fn vm_v2_cleanup_after_failed_prepare() {
    if let Some(mut h) = harness("vm_v2_cleanup_after_failed_prepare") {
        cgroups_support::cleanup_after_failed_prepare(&mut h);
    }
}

#[test]
fn vm_v2_recovery_keeps_known_and_removes_orphans() {
    if let Some(mut h) = harness("vm_v2_recovery_keeps_known_and_removes_orphans") {
        cgroups_support::recovery_keeps_known_and_removes_orphans(&mut h);
    }
}

#[test]
fn vm_v2_oom_is_reported_by_event() {
    if let Some(mut h) = harness("vm_v2_oom_is_reported_by_event") {
        cgroups_support::oom_is_reported_by_event(&mut h);
    }
}

#[test]
fn vm_v2_oom_while_down_is_reported_after_recovery() {
    if let Some(mut h) = harness("vm_v2_oom_while_down_is_reported_after_recovery") {
        cgroups_support::oom_while_down_is_reported_after_recovery(&mut h);
    }
}

#[test]
fn vm_v2_io_write_bandwidth_is_throttled() {
    if let Some(mut h) = harness("vm_v2_io_write_bandwidth_is_throttled") {
        cgroups_support::io_write_bandwidth_is_throttled(&mut h);
    }
}
