//! What the master tells the allocator: agents and frameworks coming and going, offers
//! coming back, suppression, weights, quota and priorities.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_api::{AgentId, FrameworkId, Resources};

use super::qty;
use super::state::{Agent, AgentIdx, ClientIdx, Filter, FwIdx, IdxMap};
use super::Allocator;

/// Mesos caps `refuse_seconds` at a year (`MAX_REFUSE_SECONDS`... in practice 365 days).
const MAX_REFUSE: Duration = Duration::from_secs(365 * 24 * 3600);

impl Allocator {
    /// Adds an agent with its total resources and what frameworks already use on it (after
    /// a master failover: `(framework, role, resources)` of its running tasks and executors).
    ///
    /// Frameworks not added yet are tracked as placeholders so their use counts in shares
    /// and quota until they re-subscribe. Adding a known agent again replaces it.
    pub fn add_agent(
        &mut self,
        agent: AgentId,
        total: Resources,
        used: Vec<(FrameworkId, String, Resources)>,
    ) {
        if self.agent_ids.contains_key(&agent) {
            tracing::warn!(%agent, "agent added twice; replacing it");
            self.remove_agent(&agent);
        }
        let total_q = self.kinds.qty(&total);
        qty::add(&mut self.total_q, &total_q);
        self.shares_stale = true;
        let ai = self.agents.insert(Agent {
            id: agent.clone(),
            free: total.clone(),
            free_q: total_q.clone(),
            total,
            total_q,
            active: true,
            alloc: IdxMap::default(),
            filters: IdxMap::default(),
            filtered_eligible: 0,
            filtered_by_role: IdxMap::default(),
        });
        self.agent_ids.insert(agent, ai);
        let mut summed: BTreeMap<(FrameworkId, String), Resources> = BTreeMap::new();
        for (fw, role, res) in used {
            let slot = summed.entry((fw, role)).or_default();
            *slot = slot.plus(&res);
        }
        for ((fw, role), res) in summed {
            let fi = self.framework_idx(&fw);
            let ri = self.role_idx(&role);
            let ci = self.client_idx(fi, ri);
            self.set_used(ci, ai, res);
        }
    }

    /// Makes client `ci` hold exactly `res` on agent `ai`, adjusting the agent's free
    /// resources (replaces, so the same use reported twice is counted once).
    fn set_used(&mut self, ci: ClientIdx, ai: AgentIdx, res: Resources) {
        let held = self.agents[ai].alloc.get(&ci).cloned().unwrap_or_default();
        if held == res {
            return;
        }
        let back = self.uncharge(ci, ai, &held);
        let a = &mut self.agents[ai];
        let free = a.free.plus(&back);
        if !free.contains(&res) {
            tracing::warn!(agent = %a.id, used = %res, free = %free, "agent reports more in use than it has free");
        }
        a.free = qty::saturating_minus(&free, &res);
        a.free_q = self.kinds.qty(&a.free);
        let q = self.kinds.qty(&res);
        if !res.is_empty() {
            self.charge(ci, ai, res, &q);
        }
        self.prune_filters(ai);
        self.drop_client_if_unused(ci);
    }

    /// The agent's total changed (resource update, operator override).
    pub fn update_agent(&mut self, agent: &AgentId, total: Resources) {
        let Some(&ai) = self.agent_ids.get(agent) else {
            return;
        };
        let new_q = self.kinds.qty(&total);
        let a = &mut self.agents[ai];
        qty::sub(&mut self.total_q, &a.total_q);
        qty::add(&mut self.total_q, &new_q);
        let held = a.alloc.values().fold(Resources::new(), |s, r| s.plus(r));
        if !total.contains(&held) {
            tracing::warn!(%agent, total = %total, held = %held, "agent shrank below what frameworks hold");
        }
        a.free = qty::saturating_minus(&total, &held);
        a.total = total;
        a.total_q = new_q;
        a.free_q = self.kinds.qty(&a.free);
        self.shares_stale = true;
        self.prune_filters(ai);
    }

    /// Removes an agent and everything allocated on it.
    pub fn remove_agent(&mut self, agent: &AgentId) {
        let Some(&ai) = self.agent_ids.get(agent) else {
            return;
        };
        let filtered: Vec<ClientIdx> = self.agents[ai].filters.keys().copied().collect();
        for ci in filtered {
            self.remove_filter(ci, ai);
        }
        let held: Vec<(ClientIdx, Resources)> = self.agents[ai]
            .alloc
            .iter()
            .map(|(ci, r)| (*ci, r.clone()))
            .collect();
        for (ci, res) in held {
            self.uncharge(ci, ai, &res);
            self.drop_client_if_unused(ci);
        }
        let a = self.agents.remove(ai).expect("agent index is live");
        qty::sub(&mut self.total_q, &a.total_q);
        self.agent_ids.remove(agent);
        self.shares_stale = true;
    }

    /// An agent that may be offered again (reconnected).
    pub fn activate_agent(&mut self, agent: &AgentId) {
        if let Some(&ai) = self.agent_ids.get(agent) {
            self.agents[ai].active = true;
        }
    }

    /// An agent that must not be offered (disconnected, draining); it keeps its allocations.
    pub fn deactivate_agent(&mut self, agent: &AgentId) {
        if let Some(&ai) = self.agent_ids.get(agent) {
            self.agents[ai].active = false;
        }
    }

    /// Adds (or re-adds after failover) an active framework subscribed to `roles`, with what
    /// it uses on known agents: `(agent, role, resources)`. Use on an agent replaces what
    /// the agent reported for the same framework and role, so reporting a task from both
    /// sides counts it once. Use on unknown agents is ignored (the agent reports it when
    /// it is added).
    pub fn add_framework(
        &mut self,
        fw: FrameworkId,
        roles: Vec<String>,
        used: Vec<(AgentId, String, Resources)>,
    ) {
        let fi = self.framework_idx(&fw);
        let f = &mut self.frameworks[fi];
        f.known = true;
        f.active = true;
        self.subscribe(fi, &roles);
        let mut summed: BTreeMap<(AgentIdx, String), Resources> = BTreeMap::new();
        for (agent, role, res) in used {
            let Some(&ai) = self.agent_ids.get(&agent) else {
                continue;
            };
            let slot = summed.entry((ai, role)).or_default();
            *slot = slot.plus(&res);
        }
        for ((ai, role), res) in summed {
            let ri = self.role_idx(&role);
            let ci = self.client_idx(fi, ri);
            self.set_used(ci, ai, res);
        }
    }

    /// The framework's roles changed (UPDATE_FRAMEWORK, re-subscription). Roles it leaves
    /// keep what they hold until recovered, but get no more offers.
    pub fn update_framework(&mut self, fw: &FrameworkId, roles: Vec<String>) {
        if let Some(&fi) = self.framework_ids.get(fw) {
            self.subscribe(fi, &roles);
        }
    }

    fn subscribe(&mut self, fi: FwIdx, roles: &[String]) {
        for role in roles {
            let ri = self.role_idx(role);
            let ci = self.client_idx(fi, ri);
            self.clients[ci].subscribed = true;
        }
        let clients: Vec<ClientIdx> = self.frameworks[fi].clients.values().copied().collect();
        for ci in clients {
            let name = self.roles[self.clients[ci].role].name.clone();
            if !roles.iter().any(|r| **r == *name) {
                self.clients[ci].subscribed = false;
                self.clear_filters(ci);
            }
            self.refresh_eligibility(ci);
            self.drop_client_if_unused(ci);
        }
    }

    /// Removes a framework; everything it held goes back to the agents' free resources.
    pub fn remove_framework(&mut self, fw: &FrameworkId) {
        let Some(&fi) = self.framework_ids.get(fw) else {
            return;
        };
        self.frameworks[fi].active = false;
        self.frameworks[fi].known = false;
        let clients: Vec<ClientIdx> = self.frameworks[fi].clients.values().copied().collect();
        for ci in clients {
            self.clients[ci].subscribed = false;
            self.refresh_eligibility(ci);
            let agents: Vec<AgentIdx> = self.clients[ci].agents.iter().copied().collect();
            for ai in agents {
                let held = self.agents[ai].alloc.get(&ci).cloned().unwrap_or_default();
                let back = self.uncharge(ci, ai, &held);
                self.give_back(ai, &back);
            }
            self.drop_client_if_unused(ci);
        }
        // A placeholder with no clients was dropped with its last client.
        if let Some(&fi) = self.framework_ids.get(fw) {
            if self.frameworks[fi].clients.is_empty() {
                self.frameworks.remove(fi);
                self.framework_ids.remove(fw);
            }
        }
    }

    /// The framework is connected again.
    pub fn activate_framework(&mut self, fw: &FrameworkId) {
        self.set_framework_active(fw, true);
    }

    /// The framework disconnected: no offers until it is activated. Its filters go, as in
    /// Mesos (a failed-over scheduler starts afresh).
    pub fn deactivate_framework(&mut self, fw: &FrameworkId) {
        self.set_framework_active(fw, false);
    }

    fn set_framework_active(&mut self, fw: &FrameworkId, active: bool) {
        let Some(&fi) = self.framework_ids.get(fw) else {
            return;
        };
        self.frameworks[fi].active = active;
        let clients: Vec<ClientIdx> = self.frameworks[fi].clients.values().copied().collect();
        for ci in clients {
            if !active {
                self.clear_filters(ci);
            }
            self.refresh_eligibility(ci);
        }
    }

    /// SUPPRESS: no offers for the framework in `roles` (all its roles when `None`).
    pub fn suppress(&mut self, fw: &FrameworkId, roles: Option<&[String]>) {
        for ci in self.clients_of(fw, roles) {
            self.clients[ci].suppressed = true;
            self.refresh_eligibility(ci);
        }
    }

    /// REVIVE: unsuppress the framework in `roles` (all when `None`) and drop its filters
    /// there, as Mesos does.
    pub fn revive(&mut self, fw: &FrameworkId, roles: Option<&[String]>) {
        for ci in self.clients_of(fw, roles) {
            self.clients[ci].suppressed = false;
            self.clear_filters(ci);
            self.refresh_eligibility(ci);
        }
    }

    fn clients_of(&self, fw: &FrameworkId, roles: Option<&[String]>) -> Vec<ClientIdx> {
        let Some(&fi) = self.framework_ids.get(fw) else {
            return Vec::new();
        };
        self.frameworks[fi]
            .clients
            .iter()
            .filter(|(ri, _)| {
                roles.is_none_or(|rs| rs.iter().any(|r| **r == *self.roles[**ri].name))
            })
            .map(|(_, ci)| *ci)
            .collect()
    }

    /// Resources come back from `fw` in `role` on `agent`: a declined or unused offer, a
    /// rescinded offer, a finished task. With `refuse` (DECLINE's `refuse_seconds`, Mesos
    /// default 5 s; zero means none) the framework is not offered them, or less, on that
    /// agent in that role before `now + refuse`. Resources the framework does not hold are
    /// ignored (a late or repeated recovery).
    pub fn recover(
        &mut self,
        fw: &FrameworkId,
        agent: &AgentId,
        role: &str,
        resources: &Resources,
        refuse: Option<Duration>,
        now: Instant,
    ) {
        let (Some(&fi), Some(&ai), Some(&ri)) = (
            self.framework_ids.get(fw),
            self.agent_ids.get(agent),
            self.role_ids.get(role),
        ) else {
            return;
        };
        let Some(&ci) = self.frameworks[fi].clients.get(&ri) else {
            return;
        };
        let back = self.uncharge(ci, ai, resources);
        self.give_back(ai, &back);
        match refuse {
            Some(d) if !d.is_zero() && !back.is_empty() && self.clients[ci].subscribed => {
                let expires = now.checked_add(d.min(MAX_REFUSE)).unwrap_or(now);
                // A filter covering less than the agent now has free would never apply
                // (see `prune_filters`), so it is not kept.
                if back.contains(&self.agents[ai].free) {
                    self.add_filter(
                        ci,
                        ai,
                        Filter {
                            expires,
                            refused: back,
                        },
                    );
                }
            }
            _ => {}
        }
        self.drop_client_if_unused(ci);
    }

    /// Sets role weights (Mesos's UPDATE_WEIGHTS): roles not named keep theirs. A weight
    /// that is not a positive finite number is ignored with a warning; the API layer
    /// should refuse it first.
    pub fn set_weights(&mut self, weights: BTreeMap<String, f64>) {
        for (role, w) in weights {
            if !(w.is_finite() && w > 0.0) {
                tracing::warn!(%role, weight = w, "ignoring a weight that is not positive");
                continue;
            }
            let ri = self.role_idx(&role);
            self.roles[ri].weight = w;
            self.resort_role(ri);
        }
    }

    /// Sets a role's quota: `guarantee` is satisfied before fair sharing, `limit` (`None`:
    /// unlimited) caps what the role holds. An empty guarantee and no limit remove quota.
    /// A limit below the guarantee wins over it (Mesos's API refuses that combination).
    pub fn set_quota(&mut self, role: &str, guarantee: Resources, limit: Option<Resources>) {
        let ri = self.role_idx(role);
        let g = self.kinds.qty(&guarantee);
        let l = limit.as_ref().map(|l| {
            let q = self.kinds.qty(l);
            q.into_iter()
                .enumerate()
                .filter(|(_, m)| *m > 0)
                .collect::<Vec<_>>()
        });
        let r = &mut self.roles[ri];
        r.guarantee = g;
        r.guarantee_res = guarantee;
        r.limit = l;
        r.limit_res = limit;
    }

    /// Sets a role's priority for [`super::Policy::Priority`] (higher first; default 0).
    pub fn set_priority(&mut self, role: &str, priority: i64) {
        let ri = self.role_idx(role);
        self.roles[ri].priority = priority;
        self.resort_role(ri);
    }
}
