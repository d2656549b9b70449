//! Unit tests of the core: typed calls in, typed events out.

use std::time::{Duration, Instant};

use cairn_api::protocol::{AgentCall, AgentEventType, Register, StatusUpdate};
use cairn_api::v1::mesos::{CommandInfo, FrameworkInfo, TaskInfo, TaskStatus};
use cairn_api::v1::scheduler::{
    Accept, Call, CallType, EventType, Launch, Operation, OperationType, Subscribe,
};
use cairn_api::{Resources, Source, TaskId, TaskState};

use super::*;

fn master() -> Master {
    Master::new(CoreConfig::default(), Registry::default(), None)
}

fn register(m: &mut Master, now: Instant) -> AgentId {
    let reply = m
        .agent_call(
            AgentCall::register(Register {
                hostname: "n1".into(),
                address: "127.0.0.1:5051".into(),
                resources: Resources::parse("cpus:2;mem:1024").unwrap().to_wire(),
                attributes: vec![],
                boot_id: "b1".into(),
                version: "0.1.0".into(),
                tasks: vec![],
            }),
            now,
        )
        .unwrap();
    match reply {
        agents::AgentReply::Registered(r) => r.agent_id,
        agents::AgentReply::Accepted => panic!("register answers Registered"),
    }
}

fn task(id: &str, agent: &AgentId, res: &str) -> TaskInfo {
    TaskInfo {
        name: id.into(),
        task_id: TaskId::new(id),
        agent_id: agent.clone(),
        resources: Resources::parse(res).unwrap().to_wire(),
        executor: None,
        command: Some(CommandInfo {
            value: Some("true".into()),
            ..CommandInfo::default()
        }),
        container: None,
        data: None,
        labels: None,
        kill_policy: None,
        max_completion_time: None,
    }
}

#[test]
fn launch_update_ack_flow_and_validation() {
    let now = Instant::now();
    let mut m = master();
    let agent = register(&mut m, now);
    let (_seq, mut agent_rx) = m.agent_subscribe(&agent, now).unwrap();
    assert_eq!(
        agent_rx.try_recv().unwrap().kind,
        AgentEventType::Subscribed
    );
    let sub = m
        .subscribe(
            None,
            Subscribe {
                framework_info: FrameworkInfo {
                    user: "u".into(),
                    name: "f".into(),
                    ..FrameworkInfo::default()
                },
                force: None,
                suppressed_roles: vec![],
            },
            now,
        )
        .unwrap();
    let mut rx = sub.events;
    assert_eq!(rx.try_recv().unwrap().kind, EventType::Subscribed);
    m.tick(now);
    let offers = rx.try_recv().unwrap().offers.unwrap().offers;
    assert_eq!(offers.len(), 1);
    let fw = sub.framework_id.clone();
    let mut call = Call::new(CallType::Accept, Some(fw.clone()));
    call.accept = Some(Accept {
        offer_ids: vec![offers[0].id.clone()],
        operations: vec![Operation {
            kind: OperationType::Launch,
            launch: Some(Launch {
                task_infos: vec![
                    task("t1", &agent, "cpus:1;mem:128"),
                    task("t1", &agent, "cpus:0.5;mem:128"),
                    task("big", &agent, "cpus:5;mem:128"),
                ],
            }),
            launch_group: None,
        }],
        filters: None,
    });
    m.scheduler_call(call.clone(), Some(&sub.stream_id), now)
        .unwrap();
    let launch = agent_rx.try_recv().unwrap().launch.unwrap();
    assert_eq!(launch.tasks.len(), 1);
    let e1 = rx.try_recv().unwrap().update.unwrap().status;
    assert_eq!(e1.state, TaskState::Error);
    assert!(e1.message.unwrap().contains("duplicate ID"));
    let e2 = rx.try_recv().unwrap().update.unwrap().status;
    assert!(e2.message.unwrap().contains("greater than offered"));
    // The same offer again: no longer valid.
    m.scheduler_call(call, Some(&sub.stream_id), now).unwrap();
    for _ in 0..3 {
        let lost = rx.try_recv().unwrap().update.unwrap().status;
        assert_eq!(lost.state, TaskState::Lost);
        assert!(lost.message.unwrap().contains("no longer valid"));
    }

    let mut status = TaskStatus::new(TaskId::new("t1"), TaskState::Running, Source::Executor);
    status.uuid = Some("AAECAwQFBgcICQoLDA0ODw==".into());
    m.agent_call(
        AgentCall::status_update(
            agent.clone(),
            StatusUpdate {
                framework_id: fw.clone(),
                status,
            },
        ),
        now,
    )
    .unwrap();
    let up = rx.try_recv().unwrap().update.unwrap().status;
    assert_eq!(up.state, TaskState::Running);
    assert_eq!(up.uuid.as_deref(), Some("AAECAwQFBgcICQoLDA0ODw=="));
    assert_eq!(m.metrics_snapshot()["master/tasks_running"], 1.0);
}

#[test]
fn a_burst_far_larger_than_a_heartbeat_is_queued_for_a_reader_that_moves() {
    // A reconciliation burst after a failover: thousands of updates queued at once for a
    // framework that reads them. It is not cut off for the burst's size.
    let (outbox, mut inbox) = Outbox::bounded(100_000);
    assert!((0..20_000).all(|i| outbox.send(i)));
    assert_eq!(inbox.try_recv(), Some(0));
}

#[test]
fn events_waiting_for_a_reader_that_takes_none_stall_the_subscriber() {
    let (outbox, mut inbox) = Outbox::bounded(100);
    let outbox = outbox.stalling_after(Duration::from_millis(50));
    assert!(outbox.send(1));
    assert!(outbox.send(2));
    // The reader takes one now and then: never stalled, however long the queue waits.
    for i in 3..8 {
        std::thread::sleep(Duration::from_millis(30));
        assert!(inbox.try_recv().is_some());
        assert!(outbox.send(i), "event {i}");
    }
    // It stops taking any: past the stall time the next event is refused.
    std::thread::sleep(Duration::from_millis(80));
    assert!(!outbox.send(99));
    // An idle subscriber with an empty queue is not stalled by a first event after a pause.
    let (idle, mut idle_inbox) = Outbox::bounded(100);
    let idle = idle.stalling_after(Duration::from_millis(50));
    assert!(idle.send(1));
    assert_eq!(idle_inbox.try_recv(), Some(1));
    std::thread::sleep(Duration::from_millis(80));
    assert!(idle.send(2));
    assert!(idle.send(3));
}

#[test]
fn stalled_subscriber_is_disconnected_not_buffered() {
    let now = Instant::now();
    let mut m = Master::new(
        CoreConfig {
            subscriber_queue: 4,
            framework_heartbeat: Duration::ZERO,
            ..CoreConfig::default()
        },
        Registry::default(),
        None,
    );
    let sub = m
        .subscribe(
            None,
            Subscribe {
                framework_info: FrameworkInfo::default(),
                force: None,
                suppressed_roles: vec![],
            },
            now,
        )
        .unwrap();
    for i in 0..10 {
        m.tick(now + Duration::from_millis(i));
    }
    assert!(!m
        .frameworks
        .get(&sub.framework_id)
        .is_some_and(Framework::connected));
    assert_eq!(m.counters.frameworks_disconnected_stalled, 1);
    drop(sub.events);
}

#[test]
fn silent_agents_become_unreachable_and_tasks_are_reported() {
    let now = Instant::now();
    let mut m = master();
    let agent = register(&mut m, now);
    m.tick(now + Duration::from_secs(76));
    assert!(matches!(
        m.agents[&agent].health,
        AgentHealth::Unreachable { .. }
    ));
    assert_eq!(m.metrics_snapshot()["master/slaves_unreachable"], 1.0);
}
