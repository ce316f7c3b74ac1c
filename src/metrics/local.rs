//! Counters and histograms written by one thread only: the event reader.
//! An update is a relaxed load and store, not a locked read-modify-write,
//! and a histogram finds its bucket with integer compares on nanoseconds.
//! Scrapes read the cells concurrently and publish them through the
//! registry as ordinary Prometheus counters and histograms.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus::core::Desc;

/// Adds `n` to a cell that only the calling thread writes.
#[inline]
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
}

/// A counter with a single writer.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        bump(&self.0, n);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A histogram of durations with a single writer.
#[derive(Clone)]
pub struct Histogram(Arc<HistogramCells>);

struct HistogramCells {
    /// Upper bounds in nanoseconds, rounded up so that an observation at a
    /// bound in seconds lands in that bucket.
    bounds_ns: Box<[u64]>,
    /// For bounds `b, 2b, 4b, …` (the exp2 layout): ceil(log2(b)), which
    /// finds the bucket with a leading-zero count and one compare instead
    /// of a search.
    exp2_shift: Option<u32>,
    /// One per bound, plus +Inf; not cumulative.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds_ns: &[u64]) -> Self {
        let exp2 = bounds_ns.first().is_some_and(|&b| {
            b > 0
                && bounds_ns
                    .iter()
                    .enumerate()
                    .all(|(i, &x)| b.checked_shl(i as u32).is_some_and(|v| v >> i == b && v == x))
        });
        Histogram(Arc::new(HistogramCells {
            exp2_shift: exp2.then(|| 64 - (bounds_ns[0] - 1).leading_zeros()),
            bounds_ns: bounds_ns.into(),
            buckets: (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }))
    }

    #[inline]
    pub fn observe_ns(&self, ns: u64) {
        let cells = &*self.0;
        let i = cells.bucket(ns);
        bump(&cells.buckets[i], 1);
        bump(&cells.sum_ns, ns);
    }
}

impl HistogramCells {
    /// The first bucket whose bound is at least `ns` (the +Inf bucket past
    /// the last bound).
    #[inline]
    fn bucket(&self, ns: u64) -> usize {
        let bounds = &self.bounds_ns;
        let Some(shift) = self.exp2_shift else {
            return bounds.partition_point(|&bound| bound < ns);
        };
        // With 2^(j-1) < ns <= 2^j, bound j - shift is within a factor of
        // two of ns: the bucket is it or the next one.
        let j = 64 - ns.saturating_sub(1).leading_zeros();
        let i = j.saturating_sub(shift) as usize;
        if i >= bounds.len() {
            return bounds.len();
        }
        i + usize::from(ns > bounds[i])
    }
}

/// What a family's children are.
pub trait Cell: Clone + Send + Sync + 'static {
    const TYPE: &'static str;
    fn make(bounds_ns: &[u64]) -> Self;
    /// Writes this child's samples; `labels` is its rendered label set,
    /// `les` the rendered bucket bounds.
    fn write(&self, out: &mut String, name: &str, labels: &str, les: &[String]);
}

impl Cell for Counter {
    const TYPE: &'static str = "counter";

    fn make(_: &[u64]) -> Self {
        Counter::default()
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, _: &[String]) {
        sample(out, name, "", labels, self.get());
    }
}

impl Cell for Histogram {
    const TYPE: &'static str = "histogram";

    fn make(bounds_ns: &[u64]) -> Self {
        Histogram::new(bounds_ns)
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, les: &[String]) {
        let cells = &*self.0;
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (le, cell) in les.iter().zip(cells.buckets.iter()) {
            cumulative += cell.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        sample(out, name, "_sum", labels, cells.sum_ns.load(Relaxed) as f64 * 1e-9);
        sample(out, name, "_count", labels, cumulative);
    }
}

/// One sample line; no braces when there are no labels.
fn sample(out: &mut String, name: &str, suffix: &str, labels: &str, value: impl std::fmt::Display) {
    let _ = if labels.is_empty() {
        writeln!(out, "{name}{suffix} {value}")
    } else {
        writeln!(out, "{name}{suffix}{{{labels}}} {value}")
    };
}

/// A labelled family of single-writer cells. It renders itself in the
/// Prometheus text format straight from the cells: label sets are rendered
/// once, when created, so a scrape formats only numbers.
#[derive(Clone)]
pub struct Family<C: Cell> {
    inner: Arc<FamilyInner<C>>,
}

struct FamilyInner<C> {
    name: String,
    header: String,
    label_names: Vec<String>,
    const_labels: String,
    /// Bucket bounds as `le` values, `+Inf` last; empty for counters.
    les: Vec<String>,
    bounds_ns: Vec<u64>,
    /// Touched only when a label set is first seen and at scrape time.
    children: Mutex<Vec<(String, C)>>,
}

impl<C: Cell> Family<C> {
    /// `bounds` (seconds) matter only for histograms.
    pub fn new(
        name: &str,
        help: &str,
        label_names: &[&str],
        const_labels: &BTreeMap<String, String>,
        bounds: Vec<f64>,
    ) -> prometheus::Result<Self> {
        // Desc checks the metric and label names as the registry would.
        let _ = Desc::new(
            name.to_string(),
            help.to_string(),
            label_names.iter().map(|l| l.to_string()).collect(),
            const_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        )?;
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let mut les: Vec<String> = bounds.iter().map(|b| b.to_string()).collect();
        if C::TYPE == "histogram" {
            les.push("+Inf".to_string());
        }
        Ok(Family {
            inner: Arc::new(FamilyInner {
                name: name.to_string(),
                header: format!("# HELP {name} {help}\n# TYPE {name} {}\n", C::TYPE),
                label_names: label_names.iter().map(|l| l.to_string()).collect(),
                const_labels: const_labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect::<Vec<_>>()
                    .join(","),
                les,
                bounds_ns: bounds.iter().map(|s| (s * 1e9).ceil() as u64).collect(),
                children: Mutex::new(Vec::new()),
            }),
        })
    }

    /// A new child for `values`; call once per label set (the series cache
    /// does) and keep the handle.
    pub fn child(&self, values: &[String]) -> C {
        let inner = &*self.inner;
        let cell = C::make(&inner.bounds_ns);
        let mut labels: Vec<String> =
            inner.label_names.iter().zip(values).map(|(n, v)| format!("{n}=\"{}\"", escape(v))).collect();
        if !inner.const_labels.is_empty() {
            labels.push(inner.const_labels.clone());
        }
        if let Ok(mut children) = inner.children.lock() {
            children.push((labels.join(","), cell.clone()));
        }
        cell
    }
}

/// Something that renders itself into a scrape.
pub trait Encode: Send + Sync {
    fn name(&self) -> &str;
    fn encode(&self, out: &mut String);
}

impl<C: Cell> Encode for Family<C> {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn encode(&self, out: &mut String) {
        let inner = &*self.inner;
        let Ok(children) = inner.children.lock() else { return };
        if children.is_empty() {
            return;
        }
        out.push_str(&inner.header);
        for (labels, cell) in children.iter() {
            cell.write(out, &inner.name, labels, &inner.les);
        }
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let family: Family<Histogram> =
            Family::new("h", "help", &["k"], &BTreeMap::new(), vec![0.000001, 0.000002]).expect("family");
        let h = family.child(&["a".into()]);
        for ns in [0, 1000, 1001, 2000, 5000] {
            h.observe_ns(ns);
        }
        let mut out = String::new();
        family.encode(&mut out);
        assert_eq!(
            out,
            "# HELP h help\n# TYPE h histogram\n\
             h_bucket{k=\"a\",le=\"0.000001\"} 2\n\
             h_bucket{k=\"a\",le=\"0.000002\"} 4\n\
             h_bucket{k=\"a\",le=\"+Inf\"} 5\n\
             h_sum{k=\"a\"} 0.000009001\n\
             h_count{k=\"a\"} 5\n"
        );
    }

    #[test]
    fn default_buckets_take_the_exp2_lookup() {
        let bounds = crate::config::Buckets::Exp2.bounds();
        let family: Family<Histogram> = Family::new("h", "help", &[], &BTreeMap::new(), bounds).expect("family");
        let cells = family.child(&[]).0;
        assert_eq!(cells.bounds_ns[..3], [1000, 2000, 4000]);
        assert_eq!(cells.exp2_shift, Some(10));
    }

    #[test]
    fn exp2_bucket_lookup_matches_a_search() {
        let exp2: Vec<f64> = (0..24).map(|i| 1e-6 * f64::from(1u32 << i)).collect();
        for bounds in [exp2, vec![0.5, 1.0, 2.0], vec![1e-9, 2e-9, 4e-9], vec![0.001, 0.01, 0.1]] {
            let family: Family<Histogram> = Family::new("h", "help", &[], &BTreeMap::new(), bounds).expect("family");
            let cells = family.child(&[]).0;
            let mut values: Vec<u64> = (0..5000).collect();
            for p in 0..63 {
                values.extend([(1u64 << p) - 1, 1 << p, (1 << p) + 1]);
            }
            for &b in cells.bounds_ns.iter() {
                values.extend([b - 1, b, b + 1]);
            }
            values.push(u64::MAX);
            for ns in values {
                let searched = cells.bounds_ns.partition_point(|&bound| bound < ns);
                assert_eq!(cells.bucket(ns), searched, "ns={ns} bounds={:?}", cells.bounds_ns);
            }
        }
    }

    #[test]
    fn counters_render_escaped_and_constant_labels() {
        let consts = BTreeMap::from([("node".to_string(), "n1".to_string())]);
        let family: Family<Counter> = Family::new("c_total", "help", &["comm"], &consts, vec![]).expect("family");
        family.child(&["ba\"sh\\".into()]).add(3);
        let mut out = String::new();
        family.encode(&mut out);
        assert_eq!(out, "# HELP c_total help\n# TYPE c_total counter\nc_total{comm=\"ba\\\"sh\\\\\",node=\"n1\"} 3\n");
    }

    #[test]
    fn empty_family_renders_nothing() {
        let family: Family<Counter> =
            Family::new("c_total", "help", &["comm"], &BTreeMap::new(), vec![]).expect("family");
        let mut out = String::new();
        family.encode(&mut out);
        assert!(out.is_empty());
    }
}
