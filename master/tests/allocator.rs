//! Allocation policy scenarios: simulated frameworks accept, decline and suppress offers
//! from an in-process allocator over simulated agents, and the tests check what a user of
//! the cluster would see (who holds what).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_api::{AgentId, FrameworkId, Resources};
use cairn_master::allocator::{Allocation, Allocator, AllocatorConfig, Policy};

fn res(s: &str) -> Resources {
    Resources::parse(s).expect("test resources parse")
}

fn fid(name: &str) -> FrameworkId {
    FrameworkId::new(name)
}

fn cluster(config: AllocatorConfig, agents: usize, each: &str) -> Allocator {
    let mut a = Allocator::new(config);
    for i in 0..agents {
        a.add_agent(AgentId::new(format!("agent-{i}")), res(each), Vec::new());
    }
    a
}

fn held(a: &Allocator, role: &str) -> Resources {
    a.stats()
        .roles
        .into_iter()
        .find(|r| r.role == role)
        .map(|r| r.allocated)
        .unwrap_or_default()
}

/// A framework that launches up to `tasks` tasks of `task` from an offer and declines the
/// rest with `refuse` (tasks run forever).
fn launch(
    a: &mut Allocator,
    o: &Allocation,
    task: &Resources,
    tasks: usize,
    refuse: Option<Duration>,
    now: Instant,
) {
    let mut left = o.resources.clone();
    for _ in 0..tasks {
        match left.checked_minus(task) {
            Some(l) => left = l,
            None => break,
        }
    }
    a.recover(&o.framework, &o.agent, &o.role, &left, refuse, now);
}

fn decline(a: &mut Allocator, o: &Allocation, refuse: Option<Duration>, now: Instant) {
    a.recover(&o.framework, &o.agent, &o.role, &o.resources, refuse, now);
}

#[test]
fn roles_weighted_one_and_three_converge_to_one_to_three_of_the_dominant_resource() {
    let mut a = cluster(AllocatorConfig::default(), 20, "cpus:8;mem:32768");
    a.set_weights(BTreeMap::from([
        ("light".to_string(), 1.0),
        ("heavy".to_string(), 3.0),
    ]));
    a.add_framework(fid("l"), vec!["light".into()], Vec::new());
    a.add_framework(fid("h"), vec!["heavy".into()], Vec::new());
    // cpus are dominant: a task takes 1/8 of an agent's cpus and 1/32 of its memory.
    let task = res("cpus:1;mem:1024");
    let mut now = Instant::now();
    for cycle in 0..100 {
        let offers = a.allocate(now);
        if offers.is_empty() {
            break;
        }
        for o in &offers {
            launch(&mut a, o, &task, 1, None, now);
        }
        let (l, h) = (held(&a, "light").cpus(), held(&a, "heavy").cpus());
        let ratio = h / l;
        assert!(
            (2.6..=3.4).contains(&ratio),
            "cycle {cycle}: light {l} heavy {h} cpus"
        );
        now += Duration::from_secs(1);
    }
    let (l, h) = (held(&a, "light").cpus(), held(&a, "heavy").cpus());
    assert_eq!(l + h, 160.0, "the cluster fills up");
    assert!((38.0..=42.0).contains(&l), "light holds {l} of 160 cpus");
}

#[test]
fn quota_guarantees_are_honoured_before_fair_share() {
    let run = |quota: bool| {
        let mut a = cluster(AllocatorConfig::default(), 4, "cpus:8;mem:32768");
        // The fair-share role outweighs the quota role ten to one and sorts first by name.
        a.set_weights(BTreeMap::from([("a-batch".to_string(), 10.0)]));
        if quota {
            a.set_quota("q-service", res("cpus:12;mem:49152"), None);
        }
        a.add_framework(fid("batch"), vec!["a-batch".into()], Vec::new());
        a.add_framework(fid("svc"), vec!["q-service".into()], Vec::new());
        // Both take whatever they are offered.
        a.allocate(Instant::now());
        (held(&a, "q-service"), held(&a, "a-batch"))
    };
    let (svc, batch) = run(false);
    assert_eq!(svc.cpus(), 8.0, "without quota the service gets one agent");
    assert_eq!(batch.cpus(), 24.0);
    let (svc, batch) = run(true);
    assert_eq!(svc, res("cpus:12;mem:49152"), "the guarantee, exactly");
    assert_eq!(batch, res("cpus:20;mem:81920"), "the rest is shared");
}

#[test]
fn a_quota_limit_caps_a_role_that_wants_more() {
    let mut a = cluster(AllocatorConfig::default(), 10, "cpus:8;mem:32768");
    a.set_quota("capped", Resources::new(), Some(res("cpus:10;mem:20480")));
    a.add_framework(fid("c"), vec!["capped".into()], Vec::new());
    a.add_framework(fid("o"), vec!["other".into()], Vec::new());
    let task = res("cpus:1;mem:2048");
    let mut now = Instant::now();
    for _ in 0..50 {
        for o in a.allocate(now) {
            launch(&mut a, &o, &task, 2, None, now);
        }
        let c = held(&a, "capped");
        assert!(
            c.cpus() <= 10.0 && c.mem_mb() <= 20480.0,
            "over the limit: {c}"
        );
        now += Duration::from_secs(1);
    }
    assert_eq!(held(&a, "capped"), res("cpus:10;mem:20480"));
    assert_eq!(held(&a, "other").cpus(), 70.0, "the rest of the cluster");
}

#[test]
fn strict_priority_starves_lower_priorities_while_higher_ones_want_more() {
    let config = AllocatorConfig {
        policy: Policy::Priority,
        ..AllocatorConfig::default()
    };
    let mut a = cluster(config, 8, "cpus:8;mem:32768");
    a.set_priority("high", 10);
    a.set_priority("low", 1);
    // Under DRF "low" would win ties by name and get half; under priority it gets nothing.
    a.add_framework(fid("hi"), vec!["high".into()], Vec::new());
    a.add_framework(fid("lo"), vec!["low".into()], Vec::new());
    let task = res("cpus:2;mem:8192");
    let mut now = Instant::now();
    for _ in 0..40 {
        for o in a.allocate(now) {
            assert_eq!(o.role, "high", "low offered while high wants more");
            // High launches one task per offer and declines the rest without a filter:
            // it still wants more.
            launch(&mut a, &o, &task, 1, None, now);
        }
        now += Duration::from_secs(1);
    }
    assert_eq!(held(&a, "high").cpus(), 64.0);
    assert!(held(&a, "low").is_empty());

    // Once high stops wanting (suppressed), low gets what high leaves when tasks end.
    a.suppress(&fid("hi"), None);
    a.recover(
        &fid("hi"),
        &AgentId::new("agent-0"),
        "high",
        &res("cpus:4;mem:16384"),
        None,
        now,
    );
    let offers = a.allocate(now);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].role, "low");
    assert_eq!(offers[0].resources, res("cpus:4;mem:16384"));
}

#[test]
fn declined_resources_are_not_offered_again_within_refuse_seconds() {
    let mut a = cluster(AllocatorConfig::default(), 1, "cpus:4;mem:4096");
    a.add_framework(fid("a"), vec!["r".into()], Vec::new());
    a.add_framework(fid("b"), vec!["r".into()], Vec::new());
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let refuse = Some(Duration::from_secs(10));

    let first = a.allocate(at(0));
    assert_eq!(first[0].framework, fid("a"), "ties go by framework id");
    decline(&mut a, &first[0], refuse, at(0));
    let second = a.allocate(at(1));
    assert_eq!(second[0].framework, fid("b"), "a refused it for 10 s");
    decline(&mut a, &second[0], refuse, at(1));
    for s in 2..10 {
        assert!(a.allocate(at(s)).is_empty(), "both filters hold at {s} s");
    }
    let third = a.allocate(at(10));
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].framework, fid("a"), "a's filter expired at 10 s");
    assert_eq!(third[0].resources, res("cpus:4;mem:4096"));
}

#[test]
fn suppressed_and_deactivated_frameworks_get_nothing_while_others_do() {
    let mut a = cluster(AllocatorConfig::default(), 6, "cpus:4;mem:4096");
    for f in ["active", "quiet", "gone"] {
        a.add_framework(fid(f), vec!["r".into()], Vec::new());
    }
    a.suppress(&fid("quiet"), None);
    a.deactivate_framework(&fid("gone"));
    let mut now = Instant::now();
    for _ in 0..5 {
        let offers = a.allocate(now);
        assert_eq!(offers.len(), 6);
        for o in &offers {
            assert_eq!(o.framework, fid("active"));
            decline(&mut a, o, None, now);
        }
        now += Duration::from_secs(1);
    }
    a.revive(&fid("quiet"), None);
    a.activate_framework(&fid("gone"));
    let offers = a.allocate(now);
    for f in ["active", "quiet", "gone"] {
        assert_eq!(
            offers.iter().filter(|o| o.framework == fid(f)).count(),
            2,
            "{f}"
        );
    }
}
