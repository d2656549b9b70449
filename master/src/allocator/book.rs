//! Bookkeeping shared by the lifecycle calls and the cycle: roles and clients, sorter keys,
//! eligibility counters, offer filters, and charging allocations.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cairn_api::{FrameworkId, Resources};

use super::qty;
use super::state::{
    AgentIdx, Client, ClientIdx, ClientKey, Filter, Framework, FwIdx, IdxSet, Role, RoleIdx,
    RoleKey, Share,
};
use super::{Allocator, Policy};

impl Allocator {
    /// The role named `name`, created with weight 1 on first use.
    pub(super) fn role_idx(&mut self, name: &str) -> RoleIdx {
        if let Some(ri) = self.role_ids.get(name) {
            return *ri;
        }
        self.roles.push(Role::new(name));
        self.role_ids.insert(name.to_string(), self.roles.len() - 1);
        self.roles.len() - 1
    }

    /// The framework `id`, created as an inactive placeholder if unknown.
    pub(super) fn framework_idx(&mut self, id: &FrameworkId) -> FwIdx {
        if let Some(fi) = self.framework_ids.get(id) {
            return *fi;
        }
        let fi = self.frameworks.insert(Framework {
            id: id.clone(),
            name: Arc::from(id.as_str()),
            known: false,
            active: false,
            clients: BTreeMap::new(),
        });
        self.framework_ids.insert(id.clone(), fi);
        fi
    }

    /// The client of framework `fi` in role `ri`, created unsubscribed if absent.
    pub(super) fn client_idx(&mut self, fi: FwIdx, ri: RoleIdx) -> ClientIdx {
        if let Some(ci) = self.frameworks[fi].clients.get(&ri) {
            return *ci;
        }
        let ci = self.clients.insert(Client {
            fw: fi,
            role: ri,
            subscribed: false,
            suppressed: false,
            eligible: false,
            allocated: qty::Qty::new(),
            agents: IdxSet::default(),
            filtered: IdxSet::default(),
            key: None,
        });
        self.frameworks[fi].clients.insert(ri, ci);
        self.roles[ri].clients += 1;
        ci
    }

    /// Removes a client that is neither subscribed nor holding anything, and a placeholder
    /// framework left without clients.
    pub(super) fn drop_client_if_unused(&mut self, ci: ClientIdx) {
        let Some(c) = self.clients.get(ci) else {
            return;
        };
        if c.subscribed || !c.agents.is_empty() {
            return;
        }
        // Unsubscribed, so already ineligible and out of the sorters.
        self.clear_filters(ci);
        let c = self.clients.remove(ci).expect("client checked live above");
        self.roles[c.role].clients -= 1;
        let fw = &mut self.frameworks[c.fw];
        fw.clients.remove(&c.role);
        if !fw.known && fw.clients.is_empty() {
            let id = fw.id.clone();
            self.frameworks.remove(c.fw);
            self.framework_ids.remove(&id);
        }
    }

    fn client_key(&self, ci: ClientIdx) -> ClientKey {
        let c = &self.clients[ci];
        ClientKey {
            share: Share(qty::dominant_share(
                &c.allocated,
                &self.total_q,
                &self.excluded,
            )),
            name: self.frameworks[c.fw].name.clone(),
            idx: ci,
        }
    }

    fn role_key(&self, ri: RoleIdx) -> RoleKey {
        let r = &self.roles[ri];
        let share = qty::dominant_share(&r.allocated, &self.total_q, &self.excluded) / r.weight;
        RoleKey {
            rank: match self.config.policy {
                Policy::Drf => 0,
                Policy::Priority => r.priority.saturating_neg(),
            },
            share: Share(share),
            name: r.name.clone(),
            idx: ri,
        }
    }

    /// Re-keys a client in its role's sorter after its allocation or eligibility changed.
    pub(super) fn resort_client(&mut self, ci: ClientIdx) {
        let ri = self.clients[ci].role;
        if let Some(old) = self.clients[ci].key.take() {
            self.roles[ri].sorter.remove(&old);
        }
        if self.clients[ci].eligible {
            let key = self.client_key(ci);
            self.roles[ri].sorter.insert(key.clone());
            self.clients[ci].key = Some(key);
        }
    }

    /// Re-keys a role in the role sorter after its allocation, weight, priority or
    /// eligible clients changed.
    pub(super) fn resort_role(&mut self, ri: RoleIdx) {
        if let Some(old) = self.roles[ri].key.take() {
            self.role_sorter.remove(&old);
        }
        if self.roles[ri].eligible_clients > 0 {
            let key = self.role_key(ri);
            self.role_sorter.insert(key.clone());
            self.roles[ri].key = Some(key);
        }
    }

    /// Re-keys everything (after the cluster total changed every share).
    pub(super) fn rebuild_sorters(&mut self) {
        self.role_sorter.clear();
        for r in &mut self.roles {
            r.sorter.clear();
            r.key = None;
        }
        let live: Vec<ClientIdx> = self.clients.iter().map(|(ci, _)| ci).collect();
        for ci in live {
            self.clients[ci].key = None;
            self.resort_client(ci);
        }
        for ri in 0..self.roles.len() {
            self.resort_role(ri);
        }
        self.shares_stale = false;
    }

    /// Recomputes whether a client may be offered anything, keeping the eligible counters
    /// (global, per role, per agent's filters) and the sorters in step.
    pub(super) fn refresh_eligibility(&mut self, ci: ClientIdx) {
        let c = &self.clients[ci];
        let fw = &self.frameworks[c.fw];
        let eligible = fw.known && fw.active && c.subscribed && !c.suppressed;
        if eligible == c.eligible {
            return;
        }
        let ri = c.role;
        let filtered: Vec<AgentIdx> = c.filtered.iter().copied().collect();
        self.clients[ci].eligible = eligible;
        if eligible {
            self.eligible_clients += 1;
            self.roles[ri].eligible_clients += 1;
        } else {
            self.eligible_clients -= 1;
            self.roles[ri].eligible_clients -= 1;
        }
        for ai in filtered {
            self.count_filter(ai, ri, eligible);
        }
        self.resort_client(ci);
        self.resort_role(ri);
    }

    fn count_filter(&mut self, ai: AgentIdx, ri: RoleIdx, up: bool) {
        let a = &mut self.agents[ai];
        if up {
            a.filtered_eligible += 1;
            *a.filtered_by_role.entry(ri).or_insert(0) += 1;
        } else {
            a.filtered_eligible -= 1;
            if let Some(n) = a.filtered_by_role.get_mut(&ri) {
                *n -= 1;
                if *n == 0 {
                    a.filtered_by_role.remove(&ri);
                }
            }
        }
    }

    /// Installs (or replaces) the filter of client `ci` on agent `ai`.
    pub(super) fn add_filter(&mut self, ci: ClientIdx, ai: AgentIdx, filter: Filter) {
        self.expiries
            .entry(filter.expires)
            .or_default()
            .push((ci, ai));
        let fresh = self.agents[ai].filters.insert(ci, filter).is_none();
        if fresh {
            self.clients[ci].filtered.insert(ai);
            if self.clients[ci].eligible {
                let ri = self.clients[ci].role;
                self.count_filter(ai, ri, true);
            }
        }
    }

    pub(super) fn remove_filter(&mut self, ci: ClientIdx, ai: AgentIdx) {
        let Some(a) = self.agents.get_mut(ai) else {
            return;
        };
        if a.filters.remove(&ci).is_none() {
            return;
        }
        let c = &mut self.clients[ci];
        c.filtered.remove(&ai);
        if c.eligible {
            let ri = c.role;
            self.count_filter(ai, ri, false);
        }
    }

    /// Drops every filter of a client (revive, deactivation, removal).
    pub(super) fn clear_filters(&mut self, ci: ClientIdx) {
        let agents: Vec<AgentIdx> = self.clients[ci].filtered.iter().copied().collect();
        for ai in agents {
            self.remove_filter(ci, ai);
        }
    }

    /// Drops the filters on an agent whose refused resources no longer cover its free
    /// resources: Mesos's `RefusedOfferFilter` only filters an offer that fits in what was
    /// refused, so once more is free the framework is offered again.
    pub(super) fn prune_filters(&mut self, ai: AgentIdx) {
        let a = &self.agents[ai];
        if a.filters.is_empty() {
            return;
        }
        let stale: Vec<ClientIdx> = a
            .filters
            .iter()
            .filter(|(_, f)| !f.refused.contains(&a.free))
            .map(|(ci, _)| *ci)
            .collect();
        for ci in stale {
            self.remove_filter(ci, ai);
        }
    }

    /// Removes filters whose time has come.
    pub(super) fn expire_filters(&mut self, now: Instant) {
        while let Some(entry) = self.expiries.first_entry() {
            if *entry.key() > now {
                break;
            }
            let (at, due) = entry.remove_entry();
            for (ci, ai) in due {
                // A filter replaced or removed since keeps its old entry here; skip it.
                let current = self
                    .agents
                    .get(ai)
                    .and_then(|a| a.filters.get(&ci))
                    .is_some_and(|f| f.expires == at);
                if current {
                    self.remove_filter(ci, ai);
                }
            }
        }
    }

    /// Records that client `ci` holds `res` (more) on agent `ai`. The agent's free
    /// resources are the caller's business.
    pub(super) fn charge(&mut self, ci: ClientIdx, ai: AgentIdx, res: Resources, q: &[i64]) {
        let a = &mut self.agents[ai];
        match a.alloc.get_mut(&ci) {
            Some(held) => *held = held.plus(&res),
            None => {
                a.alloc.insert(ci, res);
            }
        }
        let c = &mut self.clients[ci];
        c.agents.insert(ai);
        qty::add(&mut c.allocated, q);
        let ri = c.role;
        qty::add(&mut self.roles[ri].allocated, q);
        self.resort_client(ci);
        self.resort_role(ri);
    }

    /// Takes back up to `res` of what client `ci` holds on agent `ai`, returning what it
    /// actually held of it. The agent's free resources are the caller's business.
    pub(super) fn uncharge(&mut self, ci: ClientIdx, ai: AgentIdx, res: &Resources) -> Resources {
        let a = &mut self.agents[ai];
        let Some(held) = a.alloc.get(&ci) else {
            return Resources::new();
        };
        let taken = if held.contains(res) {
            res.clone()
        } else {
            tracing::warn!(
                agent = %a.id,
                held = %held,
                recovered = %res,
                "recovering more than the framework holds on this agent; recovering only what it holds"
            );
            qty::intersection(held, res)
        };
        let left = qty::saturating_minus(held, &taken);
        if left.is_empty() {
            a.alloc.remove(&ci);
            self.clients[ci].agents.remove(&ai);
        } else {
            a.alloc.insert(ci, left);
        }
        let q = self.kinds.qty(&taken);
        let c = &mut self.clients[ci];
        qty::sub(&mut c.allocated, &q);
        let ri = c.role;
        qty::sub(&mut self.roles[ri].allocated, &q);
        self.resort_client(ci);
        self.resort_role(ri);
        taken
    }

    /// Adds `res` to agent `ai`'s free resources and lifts filters it outgrows.
    pub(super) fn give_back(&mut self, ai: AgentIdx, res: &Resources) {
        if res.is_empty() {
            return;
        }
        let q = self.kinds.qty(res);
        let a = &mut self.agents[ai];
        a.free = a.free.plus(res);
        qty::add(&mut a.free_q, &q);
        self.prune_filters(ai);
    }
}
