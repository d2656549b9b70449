//! The allocator's books: agents, frameworks, roles and their (framework, role) clients, in
//! slabs addressed by index so the hot loop never hashes an id.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Instant;

use cairn_api::{AgentId, FrameworkId, Resources};

use super::qty::Qty;

pub(crate) type AgentIdx = usize;
pub(crate) type FwIdx = usize;
pub(crate) type RoleIdx = usize;
pub(crate) type ClientIdx = usize;

/// A multiplicative hasher for slab indices: SipHash's flood resistance buys nothing for
/// keys the allocator assigns itself, and the cycle hashes several per agent.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdxHasher(u64);

impl Hasher for IdxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by slab index.
pub(crate) type IdxMap<K, V> = HashMap<K, V, BuildHasherDefault<IdxHasher>>;
/// A set of slab indices.
pub(crate) type IdxSet<K> = HashSet<K, BuildHasherDefault<IdxHasher>>;

/// A vector of slots with reuse of freed ones.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub(crate) fn insert(&mut self, item: T) -> usize {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            self.items[i] = Some(item);
            i
        } else {
            self.items.push(Some(item));
            self.items.len() - 1
        }
    }

    pub(crate) fn remove(&mut self, i: usize) -> Option<T> {
        let item = self.items.get_mut(i)?.take()?;
        self.free.push(i);
        self.len -= 1;
        Some(item)
    }

    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)?.as_mut()
    }

    /// One past the highest slot ever used.
    pub(crate) fn capacity(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
    }
}

impl<T> std::ops::Index<usize> for Slab<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        self.get(i).expect("allocator index points at a live slot")
    }
}

impl<T> std::ops::IndexMut<usize> for Slab<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        self.get_mut(i)
            .expect("allocator index points at a live slot")
    }
}

/// A refusal: do not offer `refused` (or less) on this agent to this client before
/// `expires`.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub expires: Instant,
    pub refused: Resources,
}

#[derive(Debug)]
pub(crate) struct Agent {
    pub id: AgentId,
    pub total: Resources,
    pub total_q: Qty,
    /// Not allocated to anyone: `total - sum(alloc)`.
    pub free: Resources,
    pub free_q: Qty,
    pub active: bool,
    /// What each client holds here (offered or in use).
    pub alloc: IdxMap<ClientIdx, Resources>,
    /// Refusal filters by client. Invariant: each covers `free` (see `prune_filters`).
    pub filters: IdxMap<ClientIdx, Filter>,
    /// How many of `filters` belong to eligible clients, overall and per role: when these
    /// reach the eligible counts, nobody can be offered this agent and the cycle skips it.
    pub filtered_eligible: u32,
    pub filtered_by_role: IdxMap<RoleIdx, u32>,
}

#[derive(Debug)]
pub(crate) struct Framework {
    pub id: FrameworkId,
    pub name: Arc<str>,
    /// Added by `add_framework`; false for a placeholder created because an agent reported
    /// the framework's tasks before the framework re-subscribed.
    pub known: bool,
    pub active: bool,
    pub clients: BTreeMap<RoleIdx, ClientIdx>,
}

/// One framework in one role: the unit that receives offers (Mesos allocates per role).
#[derive(Debug)]
pub(crate) struct Client {
    pub fw: FwIdx,
    pub role: RoleIdx,
    /// The framework currently subscribes to this role (false: kept only for allocations).
    pub subscribed: bool,
    pub suppressed: bool,
    /// `known && active && subscribed && !suppressed`, cached with its counters.
    pub eligible: bool,
    pub allocated: Qty,
    /// Agents where this client holds something.
    pub agents: IdxSet<AgentIdx>,
    /// Agents where this client has a filter.
    pub filtered: IdxSet<AgentIdx>,
    /// The key under which it sits in its role's sorter, when eligible.
    pub key: Option<ClientKey>,
}

#[derive(Debug)]
pub(crate) struct Role {
    pub name: Arc<str>,
    pub weight: f64,
    pub priority: i64,
    pub guarantee: Qty,
    pub guarantee_res: Resources,
    /// Capped kinds and their caps (kinds not listed are unlimited).
    pub limit: Option<Vec<(usize, i64)>>,
    pub limit_res: Option<Resources>,
    /// Everything its clients hold, eligible or not (quota consumption).
    pub allocated: Qty,
    pub clients: usize,
    pub eligible_clients: u32,
    /// Eligible clients, neediest first.
    pub sorter: BTreeSet<ClientKey>,
    /// The key under which it sits in the role sorter, when it has eligible clients.
    pub key: Option<RoleKey>,
}

impl Role {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            weight: 1.0,
            priority: 0,
            guarantee: Qty::new(),
            guarantee_res: Resources::new(),
            limit: None,
            limit_res: None,
            allocated: Qty::new(),
            clients: 0,
            eligible_clients: 0,
            sorter: BTreeSet::new(),
            key: None,
        }
    }

    pub(crate) fn has_quota(&self) -> bool {
        !super::qty::is_zero(&self.guarantee) || self.limit.is_some()
    }
}

/// An `f64` ordered by `total_cmp` (shares are finite and non-negative).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Share(pub f64);

impl Eq for Share {}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Role order: by rank (minus priority under the priority policy, 0 under DRF), then
/// weighted dominant share, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RoleKey {
    pub rank: i64,
    pub share: Share,
    pub name: Arc<str>,
    pub idx: RoleIdx,
}

/// Framework order within a role: dominant share, then framework id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ClientKey {
    pub share: Share,
    pub name: Arc<str>,
    pub idx: ClientIdx,
}
