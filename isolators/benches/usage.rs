//! How long sampling usage takes for 1, 100 and 1000 containers' cgroups: every cgroup
//! isolator's `usage` (and the memory isolator's OOM `watch`) for each container, as the
//! agent's monitor does every second. Needs root; makes its cgroups below its own cgroup
//! and removes them. Prints a table (a bench binary, not a timed test):
//!
//!     cargo bench -p cairn-isolators --bench usage
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use cairn_api::ContainerId;
use cairn_isolators::cgroups::CgroupsConfig;
use cairn_isolators::registry::{self, IsolatorsConfig};
use cairn_isolators::{ContainerLimits, ResourceStatistics};

const NAMES: [&str; 4] = ["cgroups/cpu", "cgroups/mem", "cgroups/pids", "cgroups/io"];
const SIZES: [usize; 3] = [1, 100, 1000];

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the usage benchmark needs root (it makes cgroups); skipped");
        return;
    }
    let config = IsolatorsConfig {
        cgroups: CgroupsConfig {
            parent: format!("cairn-bench-{}", std::process::id()),
            ..CgroupsConfig::default()
        },
        ..IsolatorsConfig::default()
    };
    let isolators = registry::build(&NAMES, &config).unwrap();
    let backend = cairn_isolators::cgroups::open(&config.cgroups).unwrap();
    let limits = ContainerLimits {
        cpus: 0.5,
        cpu_hard_limits: true,
        mem_bytes: 64 << 20,
        pids: Some(100),
        ..ContainerLimits::default()
    };
    println!("cgroup backend: {:?}", backend.version());
    println!(
        "| containers | rounds | usage, all containers (median) | per container | cpu | mem | pids | io | OOM watch |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut ids: Vec<ContainerId> = Vec::new();
    for size in SIZES {
        while ids.len() < size {
            let id = ContainerId::new(format!("bench-{}", ids.len()));
            for isolator in &isolators {
                isolator.prepare(&id, &limits).unwrap();
            }
            ids.push(id);
        }
        let rounds = if size >= 1000 { 20 } else { 200 };
        let mut usage = Vec::with_capacity(rounds);
        // Per isolator, then the OOM watch, each over all containers.
        let mut parts: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); isolators.len() + 1];
        for _ in 0..rounds {
            let started = Instant::now();
            for id in &ids {
                let mut stats = ResourceStatistics::default();
                for isolator in &isolators {
                    stats.merge(&isolator.usage(id).unwrap());
                }
                std::hint::black_box(&stats);
            }
            usage.push(started.elapsed());
            for (i, isolator) in isolators.iter().enumerate() {
                let started = Instant::now();
                for id in &ids {
                    std::hint::black_box(isolator.usage(id).unwrap());
                }
                parts[i].push(started.elapsed());
            }
            let started = Instant::now();
            for id in &ids {
                std::hint::black_box(isolators[1].watch(id).unwrap());
            }
            parts[isolators.len()].push(started.elapsed());
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let u = median(&mut usage);
        let per = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6 / size as f64);
        let cols: Vec<String> = parts.iter_mut().map(|p| per(median(p))).collect();
        println!(
            "| {size} | {rounds} | {:.3} ms | {} | {} |",
            u.as_secs_f64() * 1e3,
            per(u),
            cols.join(" | ")
        );
    }
    for id in &ids {
        for isolator in isolators.iter().rev() {
            isolator.cleanup(id).unwrap();
        }
    }
    // The parents, now empty.
    for s in [
        cairn_isolators::cgroups::Subsystem::Cpu,
        cairn_isolators::cgroups::Subsystem::CpuAcct,
        cairn_isolators::cgroups::Subsystem::Memory,
        cairn_isolators::cgroups::Subsystem::Pids,
        cairn_isolators::cgroups::Subsystem::Io,
    ] {
        if let Some(parent) = backend.dir(s, "x").parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}
