//! Counters and histograms written by one thread only: the event reader.
//! An update is a relaxed load and store, not a locked read-modify-write,
//! and a histogram finds its bucket with integer compares on nanoseconds.
//! Scrapes read the cells concurrently and publish them through the
//! registry as ordinary Prometheus counters and histograms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

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
    /// One per bound, plus +Inf; not cumulative.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds_ns: &[u64]) -> Self {
        Histogram(Arc::new(HistogramCells {
            bounds_ns: bounds_ns.into(),
            buckets: (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }))
    }

    #[inline]
    pub fn observe_ns(&self, ns: u64) {
        let cells = &*self.0;
        let i = cells.bounds_ns.partition_point(|&bound| bound < ns);
        bump(&cells.buckets[i], 1);
        bump(&cells.sum_ns, ns);
    }

    fn proto(&self, bounds: &[f64]) -> proto::Histogram {
        let cells = &*self.0;
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(bounds.len());
        for (bound, cell) in bounds.iter().zip(cells.buckets.iter()) {
            cumulative += cell.load(Relaxed);
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        let count = cumulative + cells.buckets.last().map(|c| c.load(Relaxed)).unwrap_or(0);
        let mut h = proto::Histogram::default();
        h.set_sample_count(count);
        h.set_sample_sum(cells.sum_ns.load(Relaxed) as f64 * 1e-9);
        h.set_bucket(buckets);
        h
    }
}

/// What a family's children are.
pub trait Cell: Clone + Send + Sync + 'static {
    const TYPE: MetricType;
    fn make(bounds_ns: &[u64]) -> Self;
    fn fill(&self, metric: &mut proto::Metric, bounds: &[f64]);
}

impl Cell for Counter {
    const TYPE: MetricType = MetricType::COUNTER;

    fn make(_: &[u64]) -> Self {
        Counter::default()
    }

    fn fill(&self, metric: &mut proto::Metric, _: &[f64]) {
        let mut c = proto::Counter::default();
        c.set_value(self.get() as f64);
        metric.set_counter(c);
    }
}

impl Cell for Histogram {
    const TYPE: MetricType = MetricType::HISTOGRAM;

    fn make(bounds_ns: &[u64]) -> Self {
        Histogram::new(bounds_ns)
    }

    fn fill(&self, metric: &mut proto::Metric, bounds: &[f64]) {
        metric.set_histogram(self.proto(bounds));
    }
}

/// A labelled family of single-writer cells, registered like any other
/// Prometheus collector.
#[derive(Clone)]
pub struct Family<C: Cell> {
    inner: Arc<FamilyInner<C>>,
}

struct FamilyInner<C> {
    desc: Desc,
    label_names: Vec<String>,
    const_labels: Vec<LabelPair>,
    bounds: Vec<f64>,
    bounds_ns: Vec<u64>,
    /// Touched only when a label set is first seen and at scrape time.
    children: Mutex<Vec<(Vec<String>, C)>>,
}

impl<C: Cell> Family<C> {
    /// `bounds` (seconds) matter only for histograms.
    pub fn new(
        name: &str,
        help: &str,
        label_names: &[&str],
        const_labels: &HashMap<String, String>,
        bounds: Vec<f64>,
    ) -> prometheus::Result<Self> {
        let desc = Desc::new(
            name.to_string(),
            help.to_string(),
            label_names.iter().map(|l| l.to_string()).collect(),
            const_labels.clone(),
        )?;
        let const_labels = desc.const_label_pairs.clone();
        let bounds_ns = bounds.iter().map(|s| (s * 1e9).ceil() as u64).collect();
        Ok(Family {
            inner: Arc::new(FamilyInner {
                desc,
                label_names: label_names.iter().map(|l| l.to_string()).collect(),
                const_labels,
                bounds,
                bounds_ns,
                children: Mutex::new(Vec::new()),
            }),
        })
    }

    /// A new child for `values`; call once per label set (the series cache
    /// does) and keep the handle.
    pub fn child(&self, values: &[String]) -> C {
        let cell = C::make(&self.inner.bounds_ns);
        if let Ok(mut children) = self.inner.children.lock() {
            children.push((values.to_vec(), cell.clone()));
        }
        cell
    }
}

impl<C: Cell> Collector for Family<C> {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.inner.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let inner = &*self.inner;
        let Ok(children) = inner.children.lock() else { return Vec::new() };
        let mut metrics = Vec::with_capacity(children.len());
        for (values, cell) in children.iter() {
            let mut labels = inner.const_labels.clone();
            for (name, value) in inner.label_names.iter().zip(values) {
                let mut pair = LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value(value.clone());
                labels.push(pair);
            }
            labels.sort_by(|a, b| a.name().cmp(b.name()));
            let mut metric = proto::Metric::default();
            metric.set_label(labels);
            cell.fill(&mut metric, &inner.bounds);
            metrics.push(metric);
        }
        let mut family = MetricFamily::default();
        family.set_name(inner.desc.fq_name.clone());
        family.set_help(inner.desc.help.clone());
        family.set_field_type(C::TYPE);
        family.set_metric(metrics);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let family: Family<Histogram> =
            Family::new("h", "help", &["k"], &HashMap::new(), vec![0.000001, 0.000002]).expect("family");
        let h = family.child(&["a".into()]);
        for ns in [0, 1000, 1001, 2000, 5000] {
            h.observe_ns(ns);
        }
        let mf = family.collect();
        let hist = mf[0].get_metric()[0].get_histogram();
        let counts: Vec<u64> = hist.get_bucket().iter().map(|b| b.cumulative_count()).collect();
        assert_eq!(counts, vec![2, 4]);
        assert_eq!(hist.get_sample_count(), 5);
        assert!((hist.get_sample_sum() - 9001e-9).abs() < 1e-15);
    }

    #[test]
    fn counters_export_their_labels() {
        let consts = HashMap::from([("node".to_string(), "n1".to_string())]);
        let family: Family<Counter> = Family::new("c_total", "help", &["comm"], &consts, vec![]).expect("family");
        family.child(&["bash".into()]).add(3);
        let mf = family.collect();
        let metric = &mf[0].get_metric()[0];
        let labels: Vec<(&str, &str)> = metric.get_label().iter().map(|l| (l.name(), l.value())).collect();
        assert_eq!(labels, vec![("comm", "bash"), ("node", "n1")]);
        assert_eq!(metric.get_counter().get_value(), 3.0);
    }
}
