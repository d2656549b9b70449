//! Unit tests for the allocator's bookkeeping; policy scenarios live in
//! `master/tests/allocator.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_api::{AgentId, FrameworkId, Resources};

use super::{Allocation, Allocator, AllocatorConfig};

fn res(s: &str) -> Resources {
    Resources::parse(s).unwrap()
}

fn aid(i: usize) -> AgentId {
    AgentId::new(format!("agent-{i}"))
}

fn fid(name: &str) -> FrameworkId {
    FrameworkId::new(name)
}

fn roles(rs: &[&str]) -> Vec<String> {
    rs.iter().map(|r| (*r).to_string()).collect()
}

fn cluster(agents: usize, each: &str) -> Allocator {
    let mut a = Allocator::new(AllocatorConfig::default());
    for i in 0..agents {
        a.add_agent(aid(i), res(each), Vec::new());
    }
    a
}

fn role_alloc(a: &Allocator, role: &str) -> Resources {
    a.stats()
        .roles
        .into_iter()
        .find(|r| r.role == role)
        .map(|r| r.allocated)
        .unwrap_or_default()
}

fn decline_all(a: &mut Allocator, offers: &[Allocation], refuse: Option<Duration>, now: Instant) {
    for o in offers {
        a.recover(&o.framework, &o.agent, &o.role, &o.resources, refuse, now);
    }
}

#[test]
fn an_agent_goes_whole_to_one_framework_and_stays_allocated_until_recovered() {
    let mut a = cluster(2, "cpus:8;mem:32768;ports:[31000-32000]");
    a.add_framework(fid("f1"), roles(&["web"]), Vec::new());
    a.add_framework(fid("f2"), roles(&["web"]), Vec::new());
    let now = Instant::now();
    let offers = a.allocate(now);
    assert_eq!(offers.len(), 2);
    assert_ne!(offers[0].framework, offers[1].framework, "one agent each");
    for o in &offers {
        assert_eq!(o.resources, res("cpus:8;mem:32768;ports:[31000-32000]"));
    }
    assert!(a.allocate(now).is_empty(), "nothing is offered twice");
    decline_all(&mut a, &offers[..1], None, now);
    let again = a.allocate(now);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].agent, offers[0].agent);
    let stats = a.stats();
    assert_eq!(stats.allocated, res("cpus:16;mem:65536"));
    assert_eq!(stats.last_allocations, 1);
}

#[test]
fn crumbs_below_min_allocatable_are_not_offered() {
    let mut a = cluster(1, "cpus:0.005;mem:16;disk:100");
    a.add_framework(fid("f"), roles(&["r"]), Vec::new());
    let now = Instant::now();
    assert!(a.allocate(now).is_empty());
    a.update_agent(&aid(0), res("cpus:0.005;mem:32"));
    assert_eq!(a.allocate(now).len(), 1, "mem:32 meets the default minimum");

    let config = AllocatorConfig {
        min_allocatable: vec![res("cpus:1;mem:128")],
        ..AllocatorConfig::default()
    };
    let mut b = Allocator::new(config);
    b.add_agent(aid(0), res("cpus:4;mem:100"), Vec::new());
    b.add_framework(fid("f"), roles(&["r"]), Vec::new());
    assert!(
        b.allocate(now).is_empty(),
        "needs cpus:1 and mem:128 together"
    );
    b.update_agent(&aid(0), res("cpus:4;mem:128"));
    assert_eq!(b.allocate(now).len(), 1);
}

#[test]
fn suppressed_or_deactivated_frameworks_and_inactive_agents_get_nothing() {
    let mut a = cluster(1, "cpus:4;mem:4096");
    a.add_framework(fid("f"), roles(&["a", "b"]), Vec::new());
    let now = Instant::now();
    a.suppress(&fid("f"), None);
    assert!(a.allocate(now).is_empty());
    a.revive(&fid("f"), Some(&roles(&["b"])));
    let offers = a.allocate(now);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].role, "b", "role a is still suppressed");
    decline_all(&mut a, &offers, None, now);

    a.deactivate_framework(&fid("f"));
    assert!(a.allocate(now).is_empty());
    a.activate_framework(&fid("f"));
    a.deactivate_agent(&aid(0));
    assert!(a.allocate(now).is_empty());
    a.activate_agent(&aid(0));
    assert_eq!(a.allocate(now).len(), 1);
}

#[test]
fn a_filter_lifts_when_the_agent_has_more_free_than_was_refused() {
    let mut a = cluster(1, "cpus:8;mem:8192");
    a.add_framework(fid("f"), roles(&["r"]), Vec::new());
    let now = Instant::now();
    let offer = a.allocate(now).remove(0);
    // Launch a task of cpus:2;mem:2048, decline the rest for an hour.
    let task = res("cpus:2;mem:2048");
    let rest = offer.resources.checked_minus(&task).unwrap();
    a.recover(
        &fid("f"),
        &aid(0),
        "r",
        &rest,
        Some(Duration::from_secs(3600)),
        now,
    );
    assert!(a.allocate(now).is_empty(), "refused");
    assert_eq!(a.stats().filters, 1);
    // The task ends: more is free than was refused, so the framework is offered again.
    a.recover(&fid("f"), &aid(0), "r", &task, None, now);
    let offers = a.allocate(now);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].resources, res("cpus:8;mem:8192"));
}

#[test]
fn removing_an_agent_or_a_framework_removes_their_allocations() {
    let mut a = cluster(2, "cpus:4;mem:4096");
    a.add_framework(fid("f1"), roles(&["r1"]), Vec::new());
    let now = Instant::now();
    assert_eq!(a.allocate(now).len(), 2);
    assert_eq!(role_alloc(&a, "r1"), res("cpus:8;mem:8192"));
    a.remove_agent(&aid(0));
    assert_eq!(role_alloc(&a, "r1"), res("cpus:4;mem:4096"));
    assert_eq!(a.stats().total, res("cpus:4;mem:4096"));

    a.add_framework(fid("f2"), roles(&["r2"]), Vec::new());
    assert!(a.allocate(now).is_empty(), "f1 holds the only agent");
    a.remove_framework(&fid("f1"));
    assert!(role_alloc(&a, "r1").is_empty());
    let offers = a.allocate(now);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].framework, fid("f2"));
    // Late recoveries from the removed framework are ignored.
    a.recover(&fid("f1"), &aid(1), "r1", &res("cpus:4"), None, now);
    assert_eq!(a.free_on(&aid(1)), Some(&Resources::new()));
    assert_eq!(a.stats().frameworks, 1);
}

#[test]
fn use_reported_by_agent_and_framework_is_counted_once() {
    let mut a = Allocator::new(AllocatorConfig::default());
    let task = res("cpus:2;mem:1024");
    // The agent re-registers first: its framework is not known yet.
    a.add_agent(
        aid(0),
        res("cpus:8;mem:8192"),
        vec![(fid("f"), "r".to_string(), task.clone())],
    );
    assert_eq!(role_alloc(&a, "r"), task);
    assert_eq!(a.stats().frameworks, 0, "a placeholder is not a framework");
    assert_eq!(a.free_on(&aid(0)), Some(&res("cpus:6;mem:7168")));
    // Then the framework re-subscribes and reports the same task.
    a.add_framework(
        fid("f"),
        roles(&["r"]),
        vec![(aid(0), "r".to_string(), task.clone())],
    );
    assert_eq!(role_alloc(&a, "r"), task);
    assert_eq!(a.allocated_on(&fid("f"), &aid(0)), task);
    let offers = a.allocate(Instant::now());
    assert_eq!(offers[0].resources, res("cpus:6;mem:7168"));
    // A placeholder whose agent goes away disappears with it.
    a.add_agent(
        aid(1),
        res("cpus:8;mem:8192"),
        vec![(fid("ghost"), "g".to_string(), task.clone())],
    );
    a.remove_agent(&aid(1));
    assert!(role_alloc(&a, "g").is_empty());
}

#[test]
fn a_quota_limit_chops_offers_and_the_rest_goes_to_others() {
    let mut a = cluster(2, "cpus:8;mem:8192");
    a.set_quota("capped", Resources::new(), Some(res("cpus:3;mem:3072")));
    a.add_framework(fid("c"), roles(&["capped"]), Vec::new());
    let now = Instant::now();
    let offers = a.allocate(now);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].resources, res("cpus:3;mem:3072"));
    a.add_framework(fid("other"), roles(&["other"]), Vec::new());
    let offers = a.allocate(now);
    let total = offers
        .iter()
        .fold(Resources::new(), |s, o| s.plus(&o.resources));
    assert!(offers.iter().all(|o| o.framework == fid("other")));
    assert_eq!(total, res("cpus:13;mem:13312"));
}

#[test]
fn unsatisfied_guarantees_keep_their_headroom() {
    let mut a = cluster(4, "cpus:8;mem:8192");
    a.set_quota("q", res("cpus:16"), None);
    // The quota role has no framework yet; the other role may not take its headroom.
    a.add_framework(fid("greedy"), roles(&["greedy"]), Vec::new());
    let now = Instant::now();
    let offers = a.allocate(now);
    assert_eq!(role_alloc(&a, "greedy").cpus(), 16.0);
    assert_eq!(
        role_alloc(&a, "greedy").mem_mb(),
        32768.0,
        "mem has no guarantee"
    );
    assert!(!offers.is_empty());
    a.add_framework(fid("q1"), roles(&["q"]), Vec::new());
    a.allocate(now);
    assert_eq!(role_alloc(&a, "q").cpus(), 16.0);
}

#[test]
fn excluded_resources_do_not_count_in_shares() {
    let config = AllocatorConfig {
        fair_sharing_excluded: vec!["gpus".to_string()],
        ..AllocatorConfig::default()
    };
    let mut a = Allocator::new(config);
    a.add_agent(aid(0), res("cpus:1;mem:1024;gpus:1"), Vec::new());
    a.add_agent(aid(1), res("cpus:8;mem:8192"), Vec::new());
    a.add_framework(fid("f"), roles(&["r"]), Vec::new());
    let now = Instant::now();
    a.allocate(now);
    let share = a.stats().roles[0].share;
    assert!((share - 1.0).abs() < 1e-9, "cpus and mem all held: {share}");
    a.remove_agent(&aid(1));
    let share = a.stats().roles[0].share;
    assert!(
        (share - 1.0).abs() < 1e-9,
        "gpus would also be 1, but excluded: {share}"
    );
}

#[test]
fn leaving_a_role_stops_offers_there_but_keeps_what_it_holds() {
    let mut a = cluster(2, "cpus:4;mem:4096");
    a.add_framework(fid("f"), roles(&["old"]), Vec::new());
    let now = Instant::now();
    let first = a.allocate(now);
    assert_eq!(first.len(), 2);
    a.update_framework(&fid("f"), roles(&["new"]));
    assert_eq!(role_alloc(&a, "old"), res("cpus:8;mem:8192"));
    decline_all(&mut a, &first[..1], None, now);
    let offers = a.allocate(now);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].role, "new");
}

#[test]
fn weights_reorder_roles_and_invalid_weights_are_ignored() {
    let mut a = cluster(4, "cpus:1;mem:1024");
    a.add_framework(fid("fa"), roles(&["a"]), Vec::new());
    a.add_framework(fid("fb"), roles(&["b"]), Vec::new());
    a.set_weights(BTreeMap::from([
        ("b".to_string(), 3.0),
        ("a".to_string(), -1.0),
    ]));
    assert_eq!(
        a.weights(),
        BTreeMap::from([("b".to_string(), 3.0)]),
        "the negative weight is ignored"
    );
    let offers = a.allocate(Instant::now());
    let to_b = offers.iter().filter(|o| o.role == "b").count();
    assert_eq!(to_b, 3, "b weighs three times a");
}
