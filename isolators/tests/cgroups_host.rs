//! The cgroup isolators on this host's cgroup v1 hierarchies (hybrid mode), with real
//! processes. Needs root; each scenario works below the test process's own cgroups and
//! removes everything it made. The same scenarios run on cgroup v2 in `cgroup_v2.rs`.

mod cgroups_support;

use cairn_isolators::cgroups::CgroupVersion;
use cairn_testsupport::require_root;
use cgroups_support::Harness;

fn harness(test: &str) -> Option<Harness> {
    if !require_root(test) {
        return None;
    }
    let h = Harness::new(test);
    assert!(
        matches!(h.version(), CgroupVersion::V1 { .. }),
        "the host drives cgroup v1 (hybrid), got {:?}",
        h.version()
    );
    Some(h)
}

#[test]
fn root_v1_memory_limit_kills_and_reports() {
    if let Some(mut h) = harness("root_v1_memory_limit_kills_and_reports") {
        cgroups_support::memory_limit_kills_and_reports(&mut h);
    }
}

#[test]
fn root_v1_cpu_hard_limit_throttles() {
    if let Some(mut h) = harness("root_v1_cpu_hard_limit_throttles") {
        cgroups_support::cpu_hard_limit_throttles(&mut h);
    }
}

#[test]
fn root_v1_fork_bomb_stops_at_pids_limit() {
    if let Some(mut h) = harness("root_v1_fork_bomb_stops_at_pids_limit") {
        cgroups_support::fork_bomb_stops_at_pids_limit(&mut h);
    }
}

#[test]
fn root_v1_usage_matches_the_workload() {
    if let Some(mut h) = harness("root_v1_usage_matches_the_workload") {
        cgroups_support::usage_matches_the_workload(&mut h);
    }
}

#[test]
fn root_v1_cleanup_after_failed_prepare() {
    if let Some(mut h) = harness("root_v1_cleanup_after_failed_prepare") {
        cgroups_support::cleanup_after_failed_prepare(&mut h);
    }
}

#[test]
fn root_v1_recovery_keeps_known_and_removes_orphans() {
    if let Some(mut h) = harness("root_v1_recovery_keeps_known_and_removes_orphans") {
        cgroups_support::recovery_keeps_known_and_removes_orphans(&mut h);
    }
}

#[test]
fn root_v1_oom_is_reported_by_event() {
    if let Some(mut h) = harness("root_v1_oom_is_reported_by_event") {
        cgroups_support::oom_is_reported_by_event(&mut h);
    }
}

#[test]
fn root_v1_oom_while_down_is_reported_after_recovery() {
    if let Some(mut h) = harness("root_v1_oom_while_down_is_reported_after_recovery") {
        cgroups_support::oom_while_down_is_reported_after_recovery(&mut h);
    }
}

#[test]
fn root_v1_io_write_bandwidth_is_throttled() {
    if let Some(mut h) = harness("root_v1_io_write_bandwidth_is_throttled") {
        cgroups_support::io_write_bandwidth_is_throttled(&mut h);
    }
}
