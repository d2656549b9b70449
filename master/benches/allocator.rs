//! Allocation cycle time for (agents x frameworks), with simulated agents and frameworks
//! in-process, printed as a table.
//!
//! `cargo bench -p cairn-master --bench allocator` (add `-- --quick` for fewer cycles).
//!
//! Agents have `cpus:8;mem:32768`. Frameworks spread over one role per ten frameworks
//! (weights 1 to 3). Three workloads:
//! - **mixed**: odd frameworks accept part of each offer (up to 4 tasks of `cpus:1;mem:2048`
//!   while under their share of half the cluster), tasks end after 5 to 14 s; everything
//!   not launched is declined with a 5 s filter (Mesos's default `refuse_seconds`).
//! - **decline**: every framework declines every offer with a 5 s filter (Mesos's
//!   DeclineOffers benchmark, with the default filter rather than a long one).
//! - **event**: the master's event-driven cycles: frameworks keep every offer, and before each
//!   cycle (5 simulated ms apart) the offers on 10 agents come back; the cycle offers them
//!   again and passes the other agents, which have nothing free.
//!
//! A mixed or decline cycle runs every simulated second. After warm-up cycles, the table reports the median
//! and the worst of the measured `allocate()` calls (the simulated frameworks' replies are
//! not timed), and the offers made per cycle.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_api::{AgentId, FrameworkId, Resources};
use cairn_master::allocator::{Allocation, Allocator, AllocatorConfig};

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Mixed,
    Decline,
}

struct Task {
    ends: u64,
    framework: FrameworkId,
    agent: AgentId,
    role: String,
    resources: Resources,
}

struct Row {
    median: Duration,
    worst: Duration,
    offers: usize,
    setup: Duration,
}

fn res(s: &str) -> Resources {
    Resources::parse(s).expect("benchmark resources parse")
}

fn run(agents: usize, frameworks: usize, workload: Workload, warm: u64, measured: u64) -> Row {
    let setup = Instant::now();
    let mut a = Allocator::new(AllocatorConfig::default());
    for i in 0..agents {
        a.add_agent(
            AgentId::new(format!("agent-{i:06}")),
            res("cpus:8;mem:32768"),
            Vec::new(),
        );
    }
    let roles = (frameworks / 10).max(1);
    let weights = (0..roles)
        .map(|r| {
            (
                format!("role-{r:04}"),
                f64::from(u8::try_from(r % 3).unwrap_or(0) + 1),
            )
        })
        .collect();
    a.set_weights(weights);
    for j in 0..frameworks {
        a.add_framework(
            FrameworkId::new(format!("fw-{j:05}")),
            vec![format!("role-{:04}", j % roles)],
            Vec::new(),
        );
    }
    let setup = setup.elapsed();
    let accepting = |fw: &FrameworkId| {
        workload == Workload::Mixed && fw.as_str()[3..].parse::<usize>().is_ok_and(|j| j % 2 == 1)
    };
    // Acceptors together aim at half the cluster's cpus.
    let target = (agents * 8 / frameworks).max(1);
    let task = res("cpus:1;mem:2048");
    let refuse = Some(Duration::from_secs(5));
    let mut running: HashMap<FrameworkId, usize> = HashMap::new();
    let mut tasks: Vec<Task> = Vec::new();
    let t0 = Instant::now();
    let mut times = Vec::new();
    let mut offers_made = 0;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for cycle in 0..warm + measured {
        let now = t0 + Duration::from_secs(cycle);
        let (ended, still): (Vec<Task>, Vec<Task>) = tasks.drain(..).partition(|t| t.ends <= cycle);
        tasks = still;
        for t in ended {
            *running.entry(t.framework.clone()).or_insert(1) -= 1;
            a.recover(&t.framework, &t.agent, &t.role, &t.resources, None, now);
        }
        let started = Instant::now();
        let offers: Vec<Allocation> = a.allocate(now);
        let took = started.elapsed();
        if cycle >= warm {
            times.push(took);
            offers_made += offers.len();
        }
        for o in offers {
            let mut left = o.resources.clone();
            if accepting(&o.framework) {
                let n = running.entry(o.framework.clone()).or_insert(0);
                for _ in 0..4 {
                    if *n >= target {
                        break;
                    }
                    let Some(l) = left.checked_minus(&task) else {
                        break;
                    };
                    left = l;
                    *n += 1;
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    tasks.push(Task {
                        ends: cycle + 5 + seed % 10,
                        framework: o.framework.clone(),
                        agent: o.agent.clone(),
                        role: o.role.clone(),
                        resources: task.clone(),
                    });
                }
            }
            a.recover(&o.framework, &o.agent, &o.role, &left, refuse, now);
        }
    }
    times.sort();
    Row {
        median: times[times.len() / 2],
        worst: times[times.len() - 1],
        offers: offers_made / usize::try_from(measured).unwrap_or(1),
        setup,
    }
}

/// Event-driven cycles: every framework keeps what it is offered, and between two cycles
/// (5 ms apart) the offers on `changed` agents come back, as after a few finished tasks or
/// declines; the cycle offers them again. Times each cycle after the first (full) one.
fn run_event(agents: usize, frameworks: usize, changed: usize, warm: u64, measured: u64) -> Row {
    let setup = Instant::now();
    let mut a = Allocator::new(AllocatorConfig::default());
    for i in 0..agents {
        a.add_agent(
            AgentId::new(format!("agent-{i:06}")),
            res("cpus:8;mem:32768"),
            Vec::new(),
        );
    }
    for j in 0..frameworks {
        a.add_framework(
            FrameworkId::new(format!("fw-{j:05}")),
            vec![format!("role-{:04}", j % (frameworks / 10).max(1))],
            Vec::new(),
        );
    }
    let setup = setup.elapsed();
    let t0 = Instant::now();
    let mut held: Vec<Allocation> = a.allocate(t0);
    let (mut times, mut offers_made) = (Vec::new(), 0);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for cycle in 1..=warm + measured {
        let now = t0 + Duration::from_millis(5 * cycle);
        for _ in 0..changed {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            #[allow(clippy::cast_possible_truncation)]
            let o = held.swap_remove(seed as usize % held.len());
            a.recover(&o.framework, &o.agent, &o.role, &o.resources, None, now);
        }
        let started = Instant::now();
        let offers = a.allocate(now);
        let took = started.elapsed();
        if cycle > warm {
            times.push(took);
            offers_made += offers.len();
        }
        held.extend(offers);
    }
    times.sort();
    Row {
        median: times[times.len() / 2],
        worst: times[times.len() - 1],
        offers: offers_made / usize::try_from(measured).unwrap_or(1),
        setup,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (warm, measured) = if quick { (8, 5) } else { (20, 15) };
    println!(
        "allocate() cycle time, {} warm-up + {} measured cycles, agents cpus:8;mem:32768",
        warm, measured
    );
    println!();
    println!("| agents x frameworks | workload | median ms | worst ms | offers/cycle | setup ms |");
    println!("|---|---|---:|---:|---:|---:|");
    let print = |agents: usize, frameworks: usize, name: &str, row: &Row| {
        println!(
            "| {agents} x {frameworks} | {name} | {:.3} | {:.3} | {} | {:.0} |",
            ms(row.median),
            ms(row.worst),
            row.offers,
            ms(row.setup)
        );
    };
    for (agents, frameworks) in [(1000, 100), (10_000, 1000), (50_000, 200)] {
        for (workload, name) in [(Workload::Mixed, "mixed"), (Workload::Decline, "decline")] {
            print(
                agents,
                frameworks,
                name,
                &run(agents, frameworks, workload, warm, measured),
            );
        }
        print(
            agents,
            frameworks,
            "event (10 agents changed)",
            &run_event(agents, frameworks, 10, warm, measured),
        );
    }
}
