//! Dense scalar quantities for the allocator's hot loop.
//!
//! [`Resources`] keeps scalars in a map keyed by name, which is right for the wire and costly
//! in a loop that runs ten thousand times a cycle. The allocator interns each scalar name once
//! ([`Kinds`]) and does its arithmetic on vectors of thousandths ([`Qty`]), Mesos's fixed
//! point, so sums and differences stay exact. Ranges (ports) are not quantities: they travel
//! with the [`Resources`] an agent offers and never take part in sharing or quota.

use std::collections::HashMap;

use cairn_api::{Range, Resources};

/// Thousandths of each interned scalar kind; a missing tail reads as zero.
pub(crate) type Qty = Vec<i64>;

/// "No cap" for one kind in a cap vector.
pub(crate) const UNLIMITED: i64 = i64::MAX;

/// The scalar names seen so far, each with a dense index.
#[derive(Debug, Default)]
pub(crate) struct Kinds {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Kinds {
    /// The index of `name`, interning it on first sight.
    pub(crate) fn intern(&mut self, name: &str) -> usize {
        if let Some(k) = self.index.get(name) {
            return *k;
        }
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), self.names.len() - 1);
        self.names.len() - 1
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// The scalars of `r` as a dense quantity (interning new names).
    pub(crate) fn qty(&mut self, r: &Resources) -> Qty {
        let mut q = Qty::new();
        let names: Vec<String> = r.scalar_names().map(str::to_string).collect();
        for name in names {
            let k = self.intern(&name);
            if q.len() <= k {
                q.resize(k + 1, 0);
            }
            q[k] = milli(r.scalar(&name));
        }
        q
    }

    /// The scalars of `q` as [`Resources`], plus every range of `ranges_from`.
    pub(crate) fn resources(&self, q: &[i64], ranges_from: Option<&Resources>) -> Resources {
        let mut out = Resources::new();
        for (k, m) in q.iter().enumerate() {
            if *m > 0 {
                out = out.plus(&scalar(&self.names[k], *m));
            }
        }
        if let Some(from) = ranges_from {
            out = out.plus(&ranges_of(from));
        }
        out
    }
}

/// Only the range resources of `r`.
pub(crate) fn ranges_of(r: &Resources) -> Resources {
    let mut out = Resources::new();
    for wire in r.to_wire() {
        if let Some(ranges) = wire.ranges {
            let list: Vec<Range> = ranges.range;
            out = out.plus(
                &Resources::new()
                    .with_ranges(&wire.name, &list)
                    .unwrap_or_default(),
            );
        }
    }
    out
}

/// `a - b` that never fails: scalars stop at zero, and a range set that `a` does not hold
/// whole is left in `a`. Used only where the books disagree (an overcommitted agent, a
/// double recovery); the caller logs it.
pub(crate) fn saturating_minus(a: &Resources, b: &Resources) -> Resources {
    if let Some(out) = a.checked_minus(b) {
        return out;
    }
    let mut out = Resources::new();
    for wire in a.to_wire() {
        if let Some(s) = wire.scalar {
            let left = (milli(s.value) - milli(b.scalar(&wire.name))).max(0);
            out = out.plus(&scalar(&wire.name, left));
        } else if let Some(ranges) = wire.ranges {
            let mine = Resources::new()
                .with_ranges(&wire.name, &ranges.range)
                .unwrap_or_default();
            let theirs = Resources::new()
                .with_ranges(&wire.name, b.ranges(&wire.name))
                .unwrap_or_default();
            out = out.plus(&mine.checked_minus(&theirs).unwrap_or(mine));
        }
    }
    out
}

/// The part of `want` that `have` holds: scalars by minimum, range sets whole or not at all.
pub(crate) fn intersection(have: &Resources, want: &Resources) -> Resources {
    let mut out = Resources::new();
    for wire in want.to_wire() {
        if let Some(s) = wire.scalar {
            let both = milli(s.value).min(milli(have.scalar(&wire.name)));
            out = out.plus(&scalar(&wire.name, both));
        } else if let Some(ranges) = wire.ranges {
            let part = Resources::new()
                .with_ranges(&wire.name, &ranges.range)
                .unwrap_or_default();
            if have.contains(&part) {
                out = out.plus(&part);
            }
        }
    }
    out
}

/// One scalar resource of `m` thousandths (empty when not positive).
pub(crate) fn scalar(name: &str, m: i64) -> Resources {
    // Thousandths convert back exactly: below 2^53 / 1000 every value round-trips, and
    // `with_scalar` rounds to thousandths again.
    #[allow(clippy::cast_precision_loss)]
    let value = m.max(0) as f64 / 1000.0;
    Resources::new()
        .with_scalar(name, value)
        .unwrap_or_default()
}

/// A scalar value in thousandths, as [`Resources`] keeps it.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn milli(value: f64) -> i64 {
    (value * 1000.0).round() as i64
}

pub(crate) fn get(q: &[i64], k: usize) -> i64 {
    q.get(k).copied().unwrap_or(0)
}

pub(crate) fn add(a: &mut Qty, b: &[i64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// `a -= b`, stopping at zero.
pub(crate) fn sub(a: &mut Qty, b: &[i64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = (*x - y).max(0);
    }
}

pub(crate) fn is_zero(q: &[i64]) -> bool {
    q.iter().all(|m| *m == 0)
}

/// Whether every kind of `a` is at most the same kind of `b`.
pub(crate) fn le(a: &[i64], b: &[i64]) -> bool {
    a.iter().enumerate().all(|(k, m)| *m <= get(b, k))
}

/// Per-kind `min(a, cap)`; `cap` shorter than `a` reads as zero.
pub(crate) fn min(a: &[i64], cap: &[i64]) -> Qty {
    a.iter()
        .enumerate()
        .map(|(k, m)| (*m).min(get(cap, k)))
        .collect()
}

/// Per-kind `max(a - b, 0)`.
pub(crate) fn deficit(a: &[i64], b: &[i64]) -> Qty {
    a.iter()
        .enumerate()
        .map(|(k, m)| (m - get(b, k)).max(0))
        .collect()
}

/// The dominant share of `alloc` in `total`, skipping kinds marked in `excluded` and kinds
/// the cluster has none of (Mesos's DRF sorter does the same).
pub(crate) fn dominant_share(alloc: &[i64], total: &[i64], excluded: &[bool]) -> f64 {
    let mut share = 0.0f64;
    for (k, m) in alloc.iter().enumerate() {
        let t = get(total, k);
        if *m <= 0 || t <= 0 || excluded.get(k).copied().unwrap_or(false) {
            continue;
        }
        #[allow(clippy::cast_precision_loss)]
        let s = *m as f64 / t as f64;
        share = share.max(s);
    }
    share
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_round_trip_exactly() {
        let mut kinds = Kinds::default();
        let r = Resources::parse("cpus:0.1;mem:1024;ports:[1-5]").unwrap();
        let q = kinds.qty(&r);
        assert_eq!(q, vec![100, 1_024_000]);
        assert_eq!(kinds.resources(&q, Some(&r)), r);
        assert_eq!(
            kinds.resources(&q, None),
            Resources::parse("cpus:0.1;mem:1024").unwrap()
        );
    }

    #[test]
    fn saturating_and_intersection_never_go_negative() {
        let a = Resources::parse("cpus:1;mem:10;ports:[1-5]").unwrap();
        let b = Resources::parse("cpus:2;mem:4;ports:[9-9]").unwrap();
        assert_eq!(
            saturating_minus(&a, &b),
            Resources::parse("mem:6;ports:[1-5]").unwrap()
        );
        assert_eq!(
            intersection(&a, &b),
            Resources::parse("cpus:1;mem:4").unwrap()
        );
    }

    #[test]
    fn dominant_share_skips_excluded_and_absent_kinds() {
        let total = vec![8000, 32000, 0];
        assert!((dominant_share(&[2000, 4000, 5], &total, &[]) - 0.25).abs() < 1e-12);
        assert!((dominant_share(&[2000, 16000], &total, &[false, true]) - 0.25).abs() < 1e-12);
    }
}
