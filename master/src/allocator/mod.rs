//! The allocator: which framework is offered which agent's free resources, and when.
//!
//! It follows Apache Mesos's hierarchical allocator (`src/master/allocator/mesos/
//! hierarchical.cpp`, sorters in `sorter/drf`), in one synchronous struct the master drives:
//!
//! - **Hierarchical weighted DRF.** Roles are ordered by dominant share divided by weight
//!   (ties by name), then frameworks within a role by dominant share (ties by id). Shares are
//!   fractions of the cluster's total; kinds named in
//!   [`AllocatorConfig::fair_sharing_excluded`] do not count.
//! - **Quota.** A first pass gives roles with unsatisfied guarantees what they still lack
//!   (chopped to the guarantee); the second, fair pass never hands out what other roles'
//!   unsatisfied guarantees need (the headroom), and limits cap a role everywhere.
//! - **Strict priority** ([`Policy::Priority`]): roles by priority, highest first; a lower
//!   priority gets only what every higher one leaves (refused, filtered or suppressed).
//! - **Offer filters** per (framework, role, agent) from `refuse_seconds`, as Mesos's
//!   `RefusedOfferFilter`: a refusal stands while the agent's free resources fit in what was
//!   refused; more free resources on the agent lift it early.
//! - Suppressed roles, inactive frameworks and inactive agents get nothing; nothing smaller
//!   than [`AllocatorConfig::min_allocatable`] is offered.
//! - An agent's free resources go to one framework per pass (Mesos does the same): a framework
//!   launches many tasks from one offer, and splitting agents would multiply offers, rescinds
//!   and declines without making the split fairer. Quota and limits may chop an offer; the
//!   rest then goes on to the next role in the same cycle.
//!
//! Allocation state is rebuilt from what the master reports ([`Allocator::add_agent`],
//! [`Allocator::add_framework`]), never loaded from a cache. What [`Allocator::allocate`]
//! returns counts as the framework's until [`Allocator::recover`] gives it back.
//!
//! Speed: the cycle visits each agent with free resources once, and finds the neediest
//! eligible framework from sorters kept up to date incrementally; per-agent counters of
//! filtered frameworks let it skip an agent that every eligible framework has refused in
//! O(1). See `BENCHMARKS.md` ("master: allocator") and `docs/allocation.md`.

mod book;
mod cycle;
mod lifecycle;
mod qty;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use cairn_api::{AgentId, FrameworkId, Resources};
use serde::{Deserialize, Serialize};

use qty::{Kinds, Qty};
use state::{Agent, AgentIdx, Client, ClientIdx, Framework, FwIdx, Role, RoleIdx, RoleKey, Slab};

/// How roles are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Weighted dominant resource fairness (Mesos's default).
    #[default]
    Drf,
    /// Strict priority: higher [`Allocator::set_priority`] first; equal priorities share by
    /// weighted DRF. Lower priorities may starve.
    Priority,
}

/// The allocator's settings (the master's `allocation_policy`, `min_allocatable_resources`,
/// `fair_sharing_excluded_resource_names`).
#[derive(Debug, Clone, PartialEq)]
pub struct AllocatorConfig {
    pub policy: Policy,
    /// An offer must hold at least one of these (each in full), as Mesos's
    /// `--min_allocatable_resources`. Empty: anything non-empty is allocatable.
    pub min_allocatable: Vec<Resources>,
    /// Resource names left out of dominant shares (Mesos's
    /// `--fair_sharing_excluded_resource_names`, e.g. `gpus`).
    pub fair_sharing_excluded: Vec<String>,
}

impl Default for AllocatorConfig {
    /// DRF, minimum `cpus:0.01|mem:32` (Mesos's default), nothing excluded.
    fn default() -> Self {
        let one = |name: &str, v: f64| {
            Resources::new()
                .with_scalar(name, v)
                .expect("a positive constant is a valid scalar")
        };
        Self {
            policy: Policy::Drf,
            min_allocatable: vec![one("cpus", 0.01), one("mem", 32.0)],
            fair_sharing_excluded: Vec::new(),
        }
    }
}

/// Resources handed to a framework in one role on one agent: the master turns it into an
/// offer. It counts as the framework's until given back with [`Allocator::recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub framework: FrameworkId,
    pub role: String,
    pub agent: AgentId,
    pub resources: Resources,
}

/// A snapshot for metrics and the operator API.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AllocatorStats {
    /// Sum of all agents' totals.
    pub total: Resources,
    /// Held by frameworks (offered or in use), scalars only.
    pub allocated: Resources,
    pub agents: usize,
    pub active_agents: usize,
    /// Frameworks added (placeholders for frameworks not yet re-subscribed excluded).
    pub frameworks: usize,
    pub active_frameworks: usize,
    /// Offer filters in force.
    pub filters: usize,
    /// `allocate()` calls so far.
    pub cycles: u64,
    /// Wall time of the last `allocate()` (Mesos's `allocator/mesos/allocation_run_ms`).
    pub last_cycle: Option<Duration>,
    /// Allocations the last cycle made.
    pub last_allocations: usize,
    /// Every role the allocator knows, by name.
    pub roles: Vec<RoleStats>,
}

/// One role in [`AllocatorStats`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoleStats {
    pub role: String,
    pub weight: f64,
    pub priority: i64,
    /// Held by the role's frameworks, scalars only.
    pub allocated: Resources,
    /// Dominant share of the cluster, not divided by weight (Mesos's
    /// `allocator/mesos/roles/<role>/shares/dominant`).
    pub share: f64,
    pub guarantee: Resources,
    pub limit: Option<Resources>,
    /// Frameworks subscribed to the role.
    pub frameworks: usize,
}

/// The hierarchical allocator. See the module documentation.
#[derive(Debug)]
pub struct Allocator {
    config: AllocatorConfig,
    kinds: Kinds,
    min_allocatable: Vec<Qty>,
    excluded: Vec<bool>,
    agents: Slab<Agent>,
    agent_ids: HashMap<AgentId, AgentIdx>,
    frameworks: Slab<Framework>,
    framework_ids: HashMap<FrameworkId, FwIdx>,
    roles: Vec<Role>,
    role_ids: HashMap<String, RoleIdx>,
    clients: Slab<Client>,
    /// Roles with eligible clients, neediest first.
    role_sorter: BTreeSet<RoleKey>,
    total_q: Qty,
    /// Clients that may be offered something (summed over roles).
    eligible_clients: u32,
    /// Filters by expiry time; recoveries at the same instant share an entry.
    expiries: BTreeMap<Instant, Vec<(ClientIdx, AgentIdx)>>,
    /// The cluster total changed since the sorters were keyed.
    shares_stale: bool,
    cycles: u64,
    last_cycle: Option<Duration>,
    last_allocations: usize,
}

impl Allocator {
    pub fn new(config: AllocatorConfig) -> Self {
        let mut kinds = Kinds::default();
        let min_allocatable = config
            .min_allocatable
            .iter()
            .map(|r| kinds.qty(r))
            .collect();
        let mut excluded = Vec::new();
        for name in &config.fair_sharing_excluded {
            let k = kinds.intern(name);
            if excluded.len() <= k {
                excluded.resize(k + 1, false);
            }
            excluded[k] = true;
        }
        Self {
            config,
            kinds,
            min_allocatable,
            excluded,
            agents: Slab::default(),
            agent_ids: HashMap::new(),
            frameworks: Slab::default(),
            framework_ids: HashMap::new(),
            roles: Vec::new(),
            role_ids: HashMap::new(),
            clients: Slab::default(),
            role_sorter: BTreeSet::new(),
            total_q: Qty::new(),
            eligible_clients: 0,
            expiries: BTreeMap::new(),
            shares_stale: false,
            cycles: 0,
            last_cycle: None,
            last_allocations: 0,
        }
    }

    pub fn config(&self) -> &AllocatorConfig {
        &self.config
    }

    /// What `fw` holds on `agent`, summed over its roles.
    pub fn allocated_on(&self, fw: &FrameworkId, agent: &AgentId) -> Resources {
        let (Some(&fi), Some(&ai)) = (self.framework_ids.get(fw), self.agent_ids.get(agent)) else {
            return Resources::new();
        };
        let a = &self.agents[ai];
        self.frameworks[fi]
            .clients
            .values()
            .filter_map(|ci| a.alloc.get(ci))
            .fold(Resources::new(), |acc, r| acc.plus(r))
    }

    /// The agent's resources nobody holds, or `None` for an unknown agent.
    pub fn free_on(&self, agent: &AgentId) -> Option<&Resources> {
        self.agent_ids.get(agent).map(|ai| &self.agents[*ai].free)
    }

    /// The current weights of roles that have one other than 1.
    pub fn weights(&self) -> BTreeMap<String, f64> {
        self.roles
            .iter()
            .filter(|r| (r.weight - 1.0).abs() > f64::EPSILON)
            .map(|r| (r.name.to_string(), r.weight))
            .collect()
    }

    pub fn stats(&self) -> AllocatorStats {
        let mut allocated = Qty::new();
        let mut roles: Vec<RoleStats> = self
            .roles
            .iter()
            .map(|r| {
                qty::add(&mut allocated, &r.allocated);
                RoleStats {
                    role: r.name.to_string(),
                    weight: r.weight,
                    priority: r.priority,
                    allocated: self.kinds.resources(&r.allocated, None),
                    share: qty::dominant_share(&r.allocated, &self.total_q, &self.excluded),
                    guarantee: r.guarantee_res.clone(),
                    limit: r.limit_res.clone(),
                    frameworks: 0,
                }
            })
            .collect();
        for (_, c) in self.clients.iter() {
            if c.subscribed && self.frameworks[c.fw].known {
                roles[c.role].frameworks += 1;
            }
        }
        roles.sort_by(|a, b| a.role.cmp(&b.role));
        let known: Vec<bool> = self
            .frameworks
            .iter()
            .filter(|(_, f)| f.known)
            .map(|(_, f)| f.active)
            .collect();
        AllocatorStats {
            total: self.kinds.resources(&self.total_q, None),
            allocated: self.kinds.resources(&allocated, None),
            agents: self.agents.len(),
            active_agents: self.agents.iter().filter(|(_, a)| a.active).count(),
            frameworks: known.len(),
            active_frameworks: known.iter().filter(|active| **active).count(),
            filters: self.agents.iter().map(|(_, a)| a.filters.len()).sum(),
            cycles: self.cycles,
            last_cycle: self.last_cycle,
            last_allocations: self.last_allocations,
            roles,
        }
    }
}
