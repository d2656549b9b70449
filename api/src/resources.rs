//! Resources: what an agent offers and a task asks for.
//!
//! The wire form is Mesos's `Resource` JSON (`{"name":"cpus","type":"SCALAR","scalar":
//! {"value":2}}`). Arithmetic happens on [`Resources`], which keeps scalars in Mesos's fixed
//! point (three decimal places, see `Value::Scalar` in `mesos.proto`) so that adding and
//! subtracting offers never drifts, and ranges (ports) as sorted, merged intervals.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One resource in Mesos's JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ValueType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalar: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Ranges>,
}

/// `Value.Type` in Mesos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ValueType {
    Scalar,
    Ranges,
    Set,
    Text,
}

/// `Value.Scalar`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scalar {
    pub value: f64,
}

/// `Value.Ranges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranges {
    #[serde(default)]
    pub range: Vec<Range>,
}

/// An inclusive range of integers, e.g. ports 31000-32000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Range {
    pub begin: u64,
    pub end: u64,
}

/// Why resources could not be parsed or combined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource {name:?}: {problem}")]
    Invalid { name: String, problem: String },
    #[error("cannot parse resources {text:?}: {problem}")]
    Syntax { text: String, problem: String },
}

fn invalid(name: &str, problem: impl Into<String>) -> ResourceError {
    ResourceError::Invalid {
        name: name.to_string(),
        problem: problem.into(),
    }
}

const MILLI: f64 = 1000.0;

/// A bag of resources with exact arithmetic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Scalars in thousandths (Mesos's fixed point); never zero or negative.
    scalars: BTreeMap<String, i64>,
    /// Ranges sorted and merged; never empty.
    ranges: BTreeMap<String, Vec<Range>>,
}

impl Resources {
    /// An empty set of resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a scalar resource (e.g. `cpus`, `mem` in MB, `disk` in MB).
    ///
    /// # Errors
    /// A negative, infinite or NaN value.
    pub fn with_scalar(mut self, name: &str, value: f64) -> Result<Self, ResourceError> {
        let milli = to_milli(name, value)?;
        if milli > 0 {
            *self.scalars.entry(name.to_string()).or_insert(0) += milli;
        }
        Ok(self)
    }

    /// Adds ranges (e.g. `ports`).
    ///
    /// # Errors
    /// A range whose begin is after its end.
    pub fn with_ranges(mut self, name: &str, ranges: &[Range]) -> Result<Self, ResourceError> {
        for r in ranges {
            if r.begin > r.end {
                return Err(invalid(
                    name,
                    format!("range {}-{} is reversed", r.begin, r.end),
                ));
            }
        }
        let entry = self.ranges.entry(name.to_string()).or_default();
        entry.extend_from_slice(ranges);
        *entry = merge(std::mem::take(entry));
        if entry.is_empty() {
            self.ranges.remove(name);
        }
        Ok(self)
    }

    /// Builds from Mesos `Resource` JSON objects, summing duplicates.
    ///
    /// # Errors
    /// A resource without its value, with a negative value, or of a type Cairn does not
    /// account (`SET`, `TEXT`).
    pub fn from_wire(list: &[Resource]) -> Result<Self, ResourceError> {
        let mut out = Self::new();
        for r in list {
            out = match r.kind {
                ValueType::Scalar => {
                    let s = r
                        .scalar
                        .ok_or_else(|| invalid(&r.name, "SCALAR without scalar"))?;
                    out.with_scalar(&r.name, s.value)?
                }
                ValueType::Ranges => {
                    let rs = r
                        .ranges
                        .as_ref()
                        .ok_or_else(|| invalid(&r.name, "RANGES without ranges"))?;
                    out.with_ranges(&r.name, &rs.range)?
                }
                ValueType::Set | ValueType::Text => {
                    return Err(invalid(&r.name, "SET and TEXT resources are not supported"))
                }
            };
        }
        Ok(out)
    }

    /// The Mesos `Resource` JSON objects, sorted by name.
    pub fn to_wire(&self) -> Vec<Resource> {
        let scalars = self.scalars.iter().map(|(name, milli)| Resource {
            name: name.clone(),
            kind: ValueType::Scalar,
            scalar: Some(Scalar {
                value: from_milli(*milli),
            }),
            ranges: None,
        });
        let ranges = self.ranges.iter().map(|(name, rs)| Resource {
            name: name.clone(),
            kind: ValueType::Ranges,
            scalar: None,
            ranges: Some(Ranges { range: rs.clone() }),
        });
        scalars.chain(ranges).collect()
    }

    /// Parses Mesos's `--resources` text form: `cpus:2;mem:1024;ports:[31000-32000,8080-8080]`.
    ///
    /// # Errors
    /// A malformed entry, naming it.
    pub fn parse(text: &str) -> Result<Self, ResourceError> {
        let syntax = |problem: String| ResourceError::Syntax {
            text: text.to_string(),
            problem,
        };
        let mut out = Self::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, value) = entry
                .split_once(':')
                .ok_or_else(|| syntax(format!("{entry:?} has no ':'")))?;
            let (name, value) = (name.trim(), value.trim());
            if name.is_empty() {
                return Err(syntax(format!("{entry:?} has no name")));
            }
            if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                let mut ranges = Vec::new();
                for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let (b, e) = part
                        .split_once('-')
                        .ok_or_else(|| syntax(format!("range {part:?} is not BEGIN-END")))?;
                    let num = |s: &str| {
                        s.trim()
                            .parse::<u64>()
                            .map_err(|_| syntax(format!("{s:?} is not a number")))
                    };
                    ranges.push(Range {
                        begin: num(b)?,
                        end: num(e)?,
                    });
                }
                out = out.with_ranges(name, &ranges)?;
            } else {
                let v: f64 = value
                    .parse()
                    .map_err(|_| syntax(format!("{value:?} is not a number")))?;
                out = out.with_scalar(name, v)?;
            }
        }
        Ok(out)
    }

    /// The value of a scalar resource, 0 when absent.
    pub fn scalar(&self, name: &str) -> f64 {
        self.scalars.get(name).map_or(0.0, |m| from_milli(*m))
    }

    /// The ranges of a range resource, empty when absent.
    pub fn ranges(&self, name: &str) -> &[Range] {
        self.ranges.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn cpus(&self) -> f64 {
        self.scalar("cpus")
    }

    /// Memory in MB (Mesos's unit).
    pub fn mem_mb(&self) -> f64 {
        self.scalar("mem")
    }

    /// Disk in MB (Mesos's unit).
    pub fn disk_mb(&self) -> f64 {
        self.scalar("disk")
    }

    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.ranges.is_empty()
    }

    /// Names of the scalar resources present.
    pub fn scalar_names(&self) -> impl Iterator<Item = &str> {
        self.scalars.keys().map(String::as_str)
    }

    /// Why `want`'s ranges cannot be taken from `self` while `held` are taken: a range
    /// outside `self`'s, or one overlapping `held` (two tasks cannot both have port 31000;
    /// [`Resources::plus`] would merge them without a word). `None` when they can.
    pub fn range_conflict(&self, held: &Resources, want: &Resources) -> Option<String> {
        let show = |rs: &[Range]| {
            let parts: Vec<String> = rs
                .iter()
                .map(|r| format!("{}-{}", r.begin, r.end))
                .collect();
            format!("[{}]", parts.join(","))
        };
        for (name, ranges) in &want.ranges {
            for r in ranges {
                let have = self.ranges(name);
                if !have.iter().any(|h| h.begin <= r.begin && r.end <= h.end) {
                    return Some(format!(
                        "{name} {} are not all within the agent's {name} {}",
                        show(&[*r]),
                        show(have)
                    ));
                }
                if let Some(o) = held
                    .ranges(name)
                    .iter()
                    .find(|o| o.begin <= r.end && r.begin <= o.end)
                {
                    let taken = Range {
                        begin: o.begin.max(r.begin),
                        end: o.end.min(r.end),
                    };
                    return Some(format!(
                        "{name} {} are held by another task",
                        show(&[taken])
                    ));
                }
            }
        }
        None
    }

    /// Whether every resource in `other` fits inside `self`.
    pub fn contains(&self, other: &Resources) -> bool {
        other
            .scalars
            .iter()
            .all(|(n, m)| self.scalars.get(n).is_some_and(|have| have >= m))
            && other.ranges.iter().all(|(n, want)| {
                let have = self.ranges(n);
                want.iter()
                    .all(|w| have.iter().any(|h| h.begin <= w.begin && w.end <= h.end))
            })
    }

    /// `self + other`.
    pub fn plus(&self, other: &Resources) -> Resources {
        let mut out = self.clone();
        for (n, m) in &other.scalars {
            *out.scalars.entry(n.clone()).or_insert(0) += m;
        }
        for (n, rs) in &other.ranges {
            let entry = out.ranges.entry(n.clone()).or_default();
            entry.extend_from_slice(rs);
            *entry = merge(std::mem::take(entry));
        }
        out
    }

    /// `self - other`, or `None` when `other` is not contained in `self`.
    pub fn checked_minus(&self, other: &Resources) -> Option<Resources> {
        if !self.contains(other) {
            return None;
        }
        let mut out = self.clone();
        for (n, m) in &other.scalars {
            let left = out.scalars[n] - m;
            if left == 0 {
                out.scalars.remove(n);
            } else {
                out.scalars.insert(n.clone(), left);
            }
        }
        for (n, rs) in &other.ranges {
            let left = subtract_ranges(&out.ranges[n], rs);
            if left.is_empty() {
                out.ranges.remove(n);
            } else {
                out.ranges.insert(n.clone(), left);
            }
        }
        Some(out)
    }
}

impl fmt::Display for Resources {
    /// The `--resources` text form, e.g. `cpus:2;mem:1024;ports:[31000-32000]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (n, m) in &self.scalars {
            write!(f, "{}{n}:{}", if first { "" } else { ";" }, from_milli(*m))?;
            first = false;
        }
        for (n, rs) in &self.ranges {
            let parts: Vec<String> = rs
                .iter()
                .map(|r| format!("{}-{}", r.begin, r.end))
                .collect();
            write!(
                f,
                "{}{n}:[{}]",
                if first { "" } else { ";" },
                parts.join(",")
            )?;
            first = false;
        }
        Ok(())
    }
}

fn to_milli(name: &str, value: f64) -> Result<i64, ResourceError> {
    if !value.is_finite() || value < 0.0 {
        return Err(invalid(
            name,
            format!("{value} is not a finite, non-negative number"),
        ));
    }
    if value > 1e15 {
        return Err(invalid(name, format!("{value} is too large")));
    }
    #[allow(clippy::cast_possible_truncation)]
    Ok((value * MILLI).round() as i64)
}

#[allow(clippy::cast_precision_loss)]
fn from_milli(milli: i64) -> f64 {
    milli as f64 / MILLI
}

fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.begin <= last.end.saturating_add(1) => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

fn subtract_ranges(have: &[Range], take: &[Range]) -> Vec<Range> {
    let mut out = have.to_vec();
    for t in take {
        out = out
            .into_iter()
            .flat_map(|h| {
                let mut pieces = Vec::new();
                if t.end < h.begin || t.begin > h.end {
                    pieces.push(h);
                } else {
                    if t.begin > h.begin {
                        pieces.push(Range {
                            begin: h.begin,
                            end: t.begin - 1,
                        });
                    }
                    if t.end < h.end {
                        pieces.push(Range {
                            begin: t.end + 1,
                            end: h.end,
                        });
                    }
                }
                pieces
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mesos_resource_text() {
        let r = Resources::parse("cpus:2.5; mem:1024;ports:[31000-32000, 8080-8080]").unwrap();
        assert!((r.cpus() - 2.5).abs() < f64::EPSILON);
        assert!((r.mem_mb() - 1024.0).abs() < f64::EPSILON);
        assert_eq!(r.ranges("ports").len(), 2);
        assert_eq!(
            r.to_string(),
            "cpus:2.5;mem:1024;ports:[8080-8080,31000-32000]"
        );
        assert_eq!(Resources::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn bad_text_names_the_problem() {
        let err = Resources::parse("cpus:two").unwrap_err().to_string();
        assert!(err.contains("\"two\" is not a number"), "{err}");
        let err = Resources::parse("mem").unwrap_err().to_string();
        assert!(err.contains("no ':'"), "{err}");
        let err = Resources::parse("cpus:-1").unwrap_err().to_string();
        assert!(
            err.contains("cpus") && err.contains("non-negative"),
            "{err}"
        );
        let err = Resources::parse("ports:[9-3]").unwrap_err().to_string();
        assert!(err.contains("reversed"), "{err}");
    }

    #[test]
    fn fixed_point_arithmetic_does_not_drift() {
        let tenth = Resources::new().with_scalar("cpus", 0.1).unwrap();
        let mut sum = Resources::new();
        for _ in 0..10 {
            sum = sum.plus(&tenth);
        }
        assert_eq!(sum, Resources::new().with_scalar("cpus", 1.0).unwrap());
        let mut left = sum;
        for _ in 0..10 {
            left = left.checked_minus(&tenth).unwrap();
        }
        assert!(left.is_empty());
    }

    #[test]
    fn contains_and_subtracts_ranges() {
        let have = Resources::parse("cpus:4;mem:4096;ports:[31000-31010]").unwrap();
        let want = Resources::parse("cpus:1;mem:512;ports:[31005-31005]").unwrap();
        assert!(have.contains(&want));
        let left = have.checked_minus(&want).unwrap();
        assert_eq!(
            left.to_string(),
            "cpus:3;mem:3584;ports:[31000-31004,31006-31010]"
        );
        assert!(!left.contains(&want));
        assert!(left
            .checked_minus(&Resources::parse("gpus:1").unwrap())
            .is_none());
    }

    #[test]
    fn wire_form_is_mesos_json() {
        let r = Resources::parse("cpus:1;ports:[1-2]").unwrap();
        let json = serde_json::to_value(r.to_wire()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"name": "cpus", "type": "SCALAR", "scalar": {"value": 1.0}},
                {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 1, "end": 2}]}}
            ])
        );
        let back: Vec<Resource> = serde_json::from_value(json).unwrap();
        assert_eq!(Resources::from_wire(&back).unwrap(), r);
        let bad: Vec<Resource> =
            serde_json::from_str(r#"[{"name":"mem","type":"SCALAR"}]"#).unwrap();
        assert!(Resources::from_wire(&bad)
            .unwrap_err()
            .to_string()
            .contains("mem"));
    }

    #[test]
    fn range_conflicts_name_the_ports_outside_or_already_held() {
        let agent = Resources::parse("ports:[31000-31009,32000-32000]").unwrap();
        let held = Resources::parse("ports:[31002-31003]").unwrap();
        let want = |t: &str| Resources::parse(t).unwrap();
        assert_eq!(
            agent.range_conflict(&held, &want("ports:[31000-31001]")),
            None
        );
        assert_eq!(agent.range_conflict(&held, &want("cpus:1")), None);
        assert_eq!(
            agent
                .range_conflict(&held, &want("ports:[31003-31005]"))
                .unwrap(),
            "ports [31003-31003] are held by another task"
        );
        assert_eq!(
            agent
                .range_conflict(&held, &want("ports:[31009-31010]"))
                .unwrap(),
            "ports [31009-31010] are not all within the agent's ports [31000-31009,32000-32000]"
        );
        assert_eq!(
            agent.range_conflict(&held, &want("ports:[80-80]")).unwrap(),
            "ports [80-80] are not all within the agent's ports [31000-31009,32000-32000]"
        );
    }
}
