//! One allocation cycle: filters expire, quota roles get what their guarantees still lack,
//! then every agent with free resources goes to the neediest eligible framework.

use std::time::Instant;

use super::qty::{self, Qty, UNLIMITED};
use super::state::{AgentIdx, ClientIdx, RoleIdx};
use super::{Allocation, Allocator};

/// Quota bookkeeping for one cycle (Mesos's "headroom"): what is free on active agents, and
/// what roles' unsatisfied guarantees still need of it.
#[derive(Debug, Default)]
struct Headroom {
    /// Some role has a guarantee or a limit; without any, offers are never chopped.
    any_quota: bool,
    available: Qty,
    required: Qty,
}

/// What to offer: a client and how much of the agent's free scalars (`None`: all of it).
struct Pick {
    client: ClientIdx,
    amount: Option<Qty>,
}

impl Allocator {
    /// Runs one allocation cycle at `now` and returns the new allocations (at most one per
    /// agent per pass; see the module documentation). The master turns them into offers.
    pub fn allocate(&mut self, now: Instant) -> Vec<Allocation> {
        let started = Instant::now();
        self.expire_filters(now);
        if self.shares_stale {
            self.rebuild_sorters();
        }
        let mut out = Vec::new();
        let slots = self.agents.capacity();
        if self.eligible_clients > 0 && slots > 0 {
            let mut hr = self.headroom();
            // Rotate the starting agent each cycle so no agent is always first in line
            // (Mesos shuffles; a stride is enough and needs no randomness).
            #[allow(clippy::cast_possible_truncation)]
            let start = (self.cycles as usize).wrapping_mul(7919) % slots;
            if !qty::is_zero(&hr.required) {
                let mut quota_roles: Vec<RoleIdx> = (0..self.roles.len())
                    .filter(|ri| {
                        let r = &self.roles[*ri];
                        r.eligible_clients > 0 && !qty::is_zero(&deficit(r))
                    })
                    .collect();
                for i in 0..slots {
                    if quota_roles.is_empty() {
                        break;
                    }
                    self.quota_pass((start + i) % slots, &mut quota_roles, &mut hr, &mut out);
                }
            }
            for i in 0..slots {
                self.fair_pass((start + i) % slots, &mut hr, &mut out);
            }
        }
        self.cycles += 1;
        self.last_cycle = Some(started.elapsed());
        self.last_allocations = out.len();
        out
    }

    fn headroom(&self) -> Headroom {
        let mut hr = Headroom {
            any_quota: self.roles.iter().any(super::state::Role::has_quota),
            ..Headroom::default()
        };
        if !hr.any_quota {
            return hr;
        }
        for r in &self.roles {
            qty::add(&mut hr.required, &deficit(r));
        }
        if !qty::is_zero(&hr.required) {
            for (_, a) in self.agents.iter().filter(|(_, a)| a.active) {
                qty::add(&mut hr.available, &a.free_q);
            }
        }
        hr
    }

    /// Whether the agent can be offered anything at all this pass.
    fn offerable(&self, ai: AgentIdx) -> bool {
        self.agents.get(ai).is_some_and(|a| {
            a.active && a.filtered_eligible < self.eligible_clients && self.allocatable(&a.free_q)
        })
    }

    /// Mesos's `allocatable()`: at least one of the minimum quantities in full.
    fn allocatable(&self, q: &[i64]) -> bool {
        if self.min_allocatable.is_empty() {
            !qty::is_zero(q)
        } else {
            self.min_allocatable.iter().any(|m| qty::le(m, q))
        }
    }

    /// First stage: roles with unsatisfied guarantees, neediest first, get what they lack.
    fn quota_pass(
        &mut self,
        ai: AgentIdx,
        quota_roles: &mut Vec<RoleIdx>,
        hr: &mut Headroom,
        out: &mut Vec<Allocation>,
    ) {
        for _ in 0..=self.roles.len() {
            if !self.offerable(ai) {
                return;
            }
            quota_roles.retain(|ri| {
                let r = &self.roles[*ri];
                r.eligible_clients > 0 && !qty::is_zero(&deficit(r))
            });
            quota_roles.sort_by_cached_key(|ri| self.roles[*ri].key.clone());
            let pick = quota_roles
                .iter()
                .find_map(|ri| self.offer_for(ai, *ri, hr, true));
            match pick {
                Some(p) => self.grant(ai, p, hr, out),
                None => return,
            }
        }
    }

    /// Second stage: the neediest role, then its neediest framework, not filtered here.
    fn fair_pass(&mut self, ai: AgentIdx, hr: &mut Headroom, out: &mut Vec<Allocation>) {
        for _ in 0..=self.roles.len() {
            if !self.offerable(ai) {
                return;
            }
            let pick = self
                .role_sorter
                .iter()
                .find_map(|key| self.offer_for(ai, key.idx, hr, false));
            match pick {
                Some(p) => self.grant(ai, p, hr, out),
                None => return,
            }
        }
    }

    /// What role `ri` may be offered on agent `ai`, and to which of its frameworks.
    fn offer_for(&self, ai: AgentIdx, ri: RoleIdx, hr: &Headroom, quota: bool) -> Option<Pick> {
        let a = &self.agents[ai];
        let r = &self.roles[ri];
        let filtered = a.filtered_by_role.get(&ri).copied().unwrap_or(0);
        if r.eligible_clients == 0 || filtered >= r.eligible_clients {
            return None;
        }
        let amount = self.cap(ri, hr, quota).map(|cap| qty::min(&a.free_q, &cap));
        let offered = amount.as_deref().unwrap_or(&a.free_q);
        if quota {
            // The first stage only serves guarantees: the offer must carry something the
            // role still lacks.
            let lack = deficit(r);
            if !offered
                .iter()
                .enumerate()
                .any(|(k, m)| *m > 0 && qty::get(&lack, k) > 0)
            {
                return None;
            }
        }
        if amount.is_some() && !self.allocatable(offered) {
            return None;
        }
        let client = r
            .sorter
            .iter()
            .find(|key| !a.filters.contains_key(&key.idx))?
            .idx;
        Some(Pick { client, amount })
    }

    /// How much of each kind role `ri` may take now, or `None` for no cap.
    ///
    /// Limits cap everywhere. In the quota stage, a guaranteed kind is chopped to what the
    /// guarantee still lacks. Otherwise a kind is capped so that what stays free covers
    /// every other role's unsatisfied guarantee (the role's own need counts as its own).
    fn cap(&self, ri: RoleIdx, hr: &Headroom, quota: bool) -> Option<Qty> {
        if !hr.any_quota {
            return None;
        }
        let r = &self.roles[ri];
        let lack = deficit(r);
        let mut cap = vec![UNLIMITED; self.kinds.len()];
        let mut capped = false;
        for (k, c) in cap.iter_mut().enumerate() {
            if quota && qty::get(&r.guarantee, k) > 0 {
                *c = qty::get(&lack, k);
                capped = true;
            } else {
                let required = qty::get(&hr.required, k);
                if required > 0 {
                    *c = (qty::get(&hr.available, k) - required + qty::get(&lack, k)).max(0);
                    capped = true;
                }
            }
        }
        if let Some(limit) = &r.limit {
            for (k, m) in limit {
                if let Some(c) = cap.get_mut(*k) {
                    *c = (*c).min((m - qty::get(&r.allocated, *k)).max(0));
                    capped = true;
                }
            }
        }
        capped.then_some(cap)
    }

    /// Hands `pick.amount` of agent `ai`'s free resources (all of its ranges with them) to
    /// the client.
    fn grant(&mut self, ai: AgentIdx, pick: Pick, hr: &mut Headroom, out: &mut Vec<Allocation>) {
        let ci = pick.client;
        let ri = self.clients[ci].role;
        let a = &mut self.agents[ai];
        let amount = pick.amount.unwrap_or_else(|| a.free_q.clone());
        if hr.any_quota {
            let lack = deficit(&self.roles[ri]);
            qty::sub(&mut hr.available, &amount);
            qty::sub(&mut hr.required, &qty::min(&amount, &lack));
        }
        let resources = if qty::le(&a.free_q, &amount) {
            a.free_q.iter_mut().for_each(|m| *m = 0);
            std::mem::take(&mut a.free)
        } else {
            let part = self.kinds.resources(&amount, Some(&a.free));
            a.free = qty::saturating_minus(&a.free, &part);
            qty::sub(&mut a.free_q, &amount);
            part
        };
        let agent = a.id.clone();
        self.charge(ci, ai, resources.clone(), &amount);
        out.push(Allocation {
            framework: self.frameworks[self.clients[ci].fw].id.clone(),
            role: self.roles[ri].name.to_string(),
            agent,
            resources,
        });
    }
}

/// What a role's guarantee still lacks, per kind.
fn deficit(r: &super::state::Role) -> Qty {
    qty::deficit(&r.guarantee, &r.allocated)
}
