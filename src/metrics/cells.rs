//! The cells of one series: a flat array of counters written by one thread
//! only (the ring reader), one slot per counter metric and `buckets + 1`
//! slots (buckets, then the sum) per histogram. An update is a relaxed
//! load and store, not a locked read-modify-write; scrapes read the cells
//! concurrently.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::decode::NOT_OBSERVED;
use crate::spec::{Buckets, MetricKind, MetricSpec};

/// Where each of a probe's metrics lives in a series' cells.
#[derive(Debug, Clone)]
pub struct Layout {
    metrics: Vec<MetricCells>,
    width: usize,
}

#[derive(Debug, Clone)]
enum MetricCells {
    Counter {
        at: usize,
    },
    /// One cell holding a signed level as two's complement.
    Gauge {
        at: usize,
    },
    Histogram(HistogramCells),
}

#[derive(Debug, Clone)]
struct HistogramCells {
    /// First bucket's slot; the sum follows the +Inf bucket.
    at: usize,
    /// Upper bounds in observed units (ns for durations), rounded up so that
    /// an observation at a bound lands in that bucket.
    bounds: Box<[u64]>,
    /// For bounds `b, 2b, 4b, …` (the exp2 layout): ceil(log2(b)), which
    /// finds the bucket with a leading-zero count and one compare instead
    /// of a search.
    exp2_shift: Option<u32>,
    /// `le` values as exported, `+Inf` last.
    les: Box<[String]>,
    /// Observed units to exported units (ns to seconds).
    scale: f64,
}

/// A series' cells.
pub type Cells = Box<[AtomicU64]>;

impl Layout {
    /// Each histogram takes its bounds from `buckets` in its own unit
    /// (seconds, bytes).
    pub fn new(metrics: &[MetricSpec], buckets: &Buckets) -> Layout {
        let mut width = 0;
        let metrics = metrics
            .iter()
            .map(|m| match m.kind {
                MetricKind::Counter => {
                    width += 1;
                    MetricCells::Counter { at: width - 1 }
                }
                MetricKind::Gauge => {
                    width += 1;
                    MetricCells::Gauge { at: width - 1 }
                }
                MetricKind::Histogram => {
                    let scale = m.unit.scale();
                    let bounds = buckets.bounds(m.unit);
                    let raw: Box<[u64]> = bounds.iter().map(|b| (b / scale).ceil() as u64).collect();
                    let at = width;
                    width += raw.len() + 2;
                    let mut les: Vec<String> = bounds.iter().map(|b| b.to_string()).collect();
                    les.push("+Inf".into());
                    MetricCells::Histogram(HistogramCells {
                        at,
                        exp2_shift: exp2_shift(&raw),
                        bounds: raw,
                        les: les.into(),
                        scale,
                    })
                }
            })
            .collect();
        Layout { metrics, width }
    }

    /// Cells per series.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The first histogram's bounds in observed units (an aggregating BPF
    /// program buckets with them).
    pub fn histogram_bounds(&self) -> Option<&[u64]> {
        self.metrics.iter().find_map(|m| match m {
            MetricCells::Histogram(h) => Some(&*h.bounds),
            MetricCells::Counter { .. } | MetricCells::Gauge { .. } => None,
        })
    }

    pub fn cells(&self) -> Cells {
        (0..self.width).map(|_| AtomicU64::new(0)).collect()
    }

    /// Records one event: `values[i]` is added to counter `i` or observed by
    /// histogram `i` (`NOT_OBSERVED` skips it).
    #[inline]
    pub fn record(&self, cells: &[AtomicU64], values: &[u64]) {
        self.record_from(cells, 0, values);
    }

    /// Records one event whose values are for metrics `first..`: the event
    /// kinds of a probe whose metrics count different events.
    #[inline]
    pub fn record_from(&self, cells: &[AtomicU64], first: usize, values: &[u64]) {
        for (metric, &value) in self.metrics.iter().skip(first).zip(values) {
            match metric {
                MetricCells::Counter { at } | MetricCells::Gauge { at } => bump(&cells[*at], value),
                MetricCells::Histogram(_) if value == NOT_OBSERVED => {}
                MetricCells::Histogram(h) => {
                    bump(&cells[h.at + h.bucket(value)], 1);
                    bump(&cells[h.at + h.bounds.len() + 1], value);
                }
            }
        }
    }

    /// Adds `from` into `into` (series that render to one label set).
    pub fn merge_into(&self, into: &mut [u64], from: &[AtomicU64]) {
        for (a, b) in into.iter_mut().zip(from) {
            *a = a.wrapping_add(b.load(Relaxed));
        }
    }

    /// Whether a gauge holds a level other than zero: such a series must not
    /// expire, however long it stays unchanged, or the level would be lost.
    pub fn holds_level(&self, cells: &[AtomicU64]) -> bool {
        self.metrics.iter().any(|m| matches!(m, MetricCells::Gauge { at } if cells[*at].load(Relaxed) != 0))
    }

    /// A cheap fingerprint of a series' activity: it changes whenever an
    /// event is recorded (every metric counts events, so the total moves).
    pub fn activity(cells: &[AtomicU64]) -> u64 {
        cells.iter().fold(0u64, |acc, c| acc.wrapping_add(c.load(Relaxed)))
    }

    /// Writes metric `index`'s samples for one series whose label set
    /// renders as `labels` (`name="value",…`, possibly empty).
    pub fn write(&self, index: usize, out: &mut String, name: &str, labels: &str, cells: &[u64]) {
        match &self.metrics[index] {
            MetricCells::Counter { at } => sample(out, name, "", labels, cells[*at]),
            MetricCells::Gauge { at } => sample(out, name, "", labels, cells[*at] as i64),
            MetricCells::Histogram(h) => {
                let sep = if labels.is_empty() { "" } else { "," };
                let mut cumulative = 0u64;
                for (i, le) in h.les.iter().enumerate() {
                    cumulative += cells[h.at + i];
                    out.push_str(name);
                    out.push_str("_bucket{");
                    out.push_str(labels);
                    out.push_str(sep);
                    out.push_str("le=\"");
                    out.push_str(le);
                    out.push_str("\"} ");
                    let _ = write!(out, "{cumulative}");
                    out.push('\n');
                }
                let sum = cells[h.at + h.bounds.len() + 1] as f64 * h.scale;
                sample(out, name, "_sum", labels, sum);
                sample(out, name, "_count", labels, cumulative);
            }
        }
    }
}

/// Adds `n` to a cell that only the calling thread writes.
#[inline]
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
}

fn exp2_shift(bounds: &[u64]) -> Option<u32> {
    let first = *bounds.first()?;
    let exp2 = first > 0
        && bounds
            .iter()
            .enumerate()
            .all(|(i, &x)| first.checked_shl(i as u32).is_some_and(|v| v >> i == first && v == x));
    exp2.then(|| 64 - (first - 1).leading_zeros())
}

impl HistogramCells {
    /// The first bucket whose bound is at least `v` (the +Inf bucket past
    /// the last bound).
    #[inline]
    fn bucket(&self, v: u64) -> usize {
        let bounds = &self.bounds;
        let Some(shift) = self.exp2_shift else {
            return bounds.partition_point(|&bound| bound < v);
        };
        // With 2^(j-1) < v <= 2^j, bound j - shift is within a factor of
        // two of v: the bucket is it or the next one.
        let j = 64 - v.saturating_sub(1).leading_zeros();
        let i = j.saturating_sub(shift) as usize;
        if i >= bounds.len() {
            return bounds.len();
        }
        i + usize::from(v > bounds[i])
    }
}

/// One sample line; no braces when there are no labels. Pieces are pushed
/// as they are, and only the number goes through the formatter: a scrape of
/// many series is mostly this function.
fn sample(out: &mut String, name: &str, suffix: &str, labels: &str, value: impl std::fmt::Display) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() {
        out.push('{');
        out.push_str(labels);
        out.push('}');
    }
    out.push(' ');
    let _ = write!(out, "{value}");
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Unit;

    fn histogram(bounds: &[f64]) -> Layout {
        Layout::new(&[MetricSpec::histogram("h", Unit::Seconds, "help")], &Buckets::Explicit(bounds.to_vec()))
    }

    fn snapshot(cells: &[AtomicU64]) -> Vec<u64> {
        cells.iter().map(|c| c.load(Relaxed)).collect()
    }

    #[test]
    fn not_observed_skips_the_histogram_but_not_the_counter() {
        let layout = Layout::new(
            &[MetricSpec::counter("c", "help"), MetricSpec::histogram("h", Unit::Seconds, "help")],
            &Buckets::Explicit(vec![0.000001]),
        );
        let cells = layout.cells();
        layout.record(&cells, &[1, NOT_OBSERVED]);
        layout.record(&cells, &[0, 1000]);
        // counter, bucket le=1µs, +Inf, sum
        assert_eq!(snapshot(&cells), vec![1, 1, 0, 1000]);
    }

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let layout = histogram(&[0.000001, 0.000002]);
        let cells = layout.cells();
        for ns in [0, 1000, 1001, 2000, 5000] {
            layout.record(&cells, &[ns]);
        }
        let mut out = String::new();
        layout.write(0, &mut out, "h", "k=\"a\"", &snapshot(&cells));
        assert_eq!(
            out,
            "h_bucket{k=\"a\",le=\"0.000001\"} 2\n\
             h_bucket{k=\"a\",le=\"0.000002\"} 4\n\
             h_bucket{k=\"a\",le=\"+Inf\"} 5\n\
             h_sum{k=\"a\"} 0.000009001\n\
             h_count{k=\"a\"} 5\n"
        );
    }

    #[test]
    fn default_buckets_take_the_exp2_lookup() {
        let layout = histogram(&Buckets::Exp2.bounds(Unit::Seconds));
        let MetricCells::Histogram(h) = &layout.metrics[0] else { panic!("histogram") };
        assert_eq!(h.bounds[..3], [1000, 2000, 4000]);
        assert_eq!(h.exp2_shift, Some(10));
    }

    #[test]
    fn each_histogram_takes_the_buckets_in_its_own_unit() {
        let metrics = [MetricSpec::histogram("t", Unit::Seconds, "t"), MetricSpec::histogram("b", Unit::Bytes, "b")];
        let layout = Layout::new(&metrics, &Buckets::Exp2);
        let bounds = |i: usize| match &layout.metrics[i] {
            MetricCells::Histogram(h) => h.bounds.clone(),
            _ => panic!("histogram"),
        };
        assert_eq!((bounds(0)[0], bounds(0).len()), (1000, 24), "1 µs in ns, up to ~8.4 s");
        assert_eq!((bounds(1)[0], *bounds(1).last().unwrap()), (1, 1 << 30), "1 B to 1 GiB");
        let linear = Layout::new(&metrics[1..], &Buckets::Linear { start: 100.0, width: 50.0, count: 3 });
        let cells = linear.cells();
        for bytes in [100, 101, 150, 151, 250] {
            linear.record(&cells, &[bytes]);
        }
        let mut out = String::new();
        linear.write(0, &mut out, "b", "", &snapshot(&cells));
        assert_eq!(
            out,
            "b_bucket{le=\"100\"} 1\nb_bucket{le=\"150\"} 3\nb_bucket{le=\"200\"} 4\n\
             b_bucket{le=\"+Inf\"} 5\nb_sum 752\nb_count 5\n"
        );
    }

    #[test]
    fn exp2_bucket_lookup_matches_a_search() {
        let exp2: Vec<f64> = (0..24).map(|i| 1e-6 * f64::from(1u32 << i)).collect();
        for bounds in [exp2, vec![0.5, 1.0, 2.0], vec![1e-9, 2e-9, 4e-9], vec![0.001, 0.01, 0.1]] {
            let layout = histogram(&bounds);
            let MetricCells::Histogram(h) = &layout.metrics[0] else { panic!("histogram") };
            let mut values: Vec<u64> = (0..5000).collect();
            for p in 0..63 {
                values.extend([(1u64 << p) - 1, 1 << p, (1 << p) + 1]);
            }
            for &b in h.bounds.iter() {
                values.extend([b - 1, b, b + 1]);
            }
            values.push(u64::MAX);
            for v in values {
                let searched = h.bounds.partition_point(|&bound| bound < v);
                assert_eq!(h.bucket(v), searched, "v={v} bounds={:?}", h.bounds);
            }
        }
    }

    #[test]
    fn counters_and_histograms_share_one_array() {
        let layout = Layout::new(
            &[MetricSpec::counter("c_total", "c"), MetricSpec::histogram("h", Unit::Seconds, "h")],
            &Buckets::Explicit(vec![0.001]),
        );
        let cells = layout.cells();
        assert_eq!(cells.len(), 1 + 3);
        layout.record(&cells, &[1, 5_000_000]);
        layout.record(&cells, &[1, 10]);
        assert_eq!(snapshot(&cells), vec![2, 1, 1, 5_000_010]);
        let mut out = String::new();
        layout.write(0, &mut out, "c_total", "", &snapshot(&cells));
        assert_eq!(out, "c_total 2\n");
    }

    #[test]
    fn gauges_take_signed_deltas_from_their_first_metric_on() {
        let layout =
            Layout::new(&[MetricSpec::counter("c_total", "help"), MetricSpec::gauge("g", "help")], &Buckets::Exp2);
        let cells = layout.cells();
        layout.record_from(&cells, 1, &[1]);
        assert!(layout.holds_level(&cells), "a level of 1 must not expire");
        layout.record_from(&cells, 1, &[(-2i64) as u64]);
        let mut out = String::new();
        layout.write(1, &mut out, "g", "", &snapshot(&cells));
        layout.write(0, &mut out, "c_total", "", &snapshot(&cells));
        assert_eq!(out, "g -1\nc_total 0\n");
        layout.record_from(&cells, 1, &[1]);
        assert!(!layout.holds_level(&cells), "back at zero");
    }
}
