//! A probe's metric families, rendered straight into the Prometheus text
//! format from its series table. Label values are rendered from each key
//! once, at the first scrape that sees it; keys that render to the same
//! label set (say, two cgroups that are both gone) are merged, so no scrape
//! ever holds two series with one name and label set.

use std::fmt::Write;
use std::sync::{Arc, Mutex};

use super::cells::Layout;
use super::series::{Entry, Key, Published};
use crate::labels::OVERFLOW;
use crate::spec::{MetricKind, MetricSpec};

/// Renders a key's label values, one per label name of the family, in
/// order; None while a value is not known yet (an enricher still resolving
/// it): the series is left out of this scrape and rendered at the next.
pub trait RenderLabels: Send + Sync {
    fn values(&self, key: &Key) -> Option<Vec<String>>;
    /// Whether the key's series carries metric `metric` (spec order): a
    /// probe whose metrics count different kinds of events keys each kind
    /// apart, and each kind's series shows only its own metrics.
    fn carries(&self, _metric: usize, _key: &Key) -> bool {
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FamilyError {
    #[error("label renderer gives {got} values for {want} label names")]
    LabelCount { got: usize, want: usize },
    #[error("invalid metric or label name: {0}")]
    Name(#[from] prometheus::Error),
}

struct Metric {
    name: String,
    header: String,
}

pub struct ProbeFamilies {
    probe: String,
    metrics: Vec<Metric>,
    label_names: Vec<String>,
    /// `name="value"` pairs of the constant labels, joined.
    const_labels: String,
    layout: Arc<Layout>,
    published: Arc<Published>,
    render: Arc<dyn RenderLabels>,
    grouping: Mutex<Grouping>,
}

/// Entries grouped by rendered label set, sorted; valid for one generation
/// of the table.
#[derive(Default)]
struct Grouping {
    generation: Option<u64>,
    groups: Vec<(Arc<str>, Vec<Arc<Entry>>)>,
}

impl ProbeFamilies {
    /// `names`: the metrics' full (prefixed) names, in spec order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        probe: &str,
        specs: &[MetricSpec],
        names: Vec<String>,
        label_names: Vec<String>,
        label_count: usize,
        const_labels: &[(String, String)],
        layout: Arc<Layout>,
        published: Arc<Published>,
        render: Arc<dyn RenderLabels>,
    ) -> Result<Self, FamilyError> {
        if label_count != label_names.len() {
            return Err(FamilyError::LabelCount { got: label_count, want: label_names.len() });
        }
        let mut metrics = Vec::new();
        for (spec, name) in specs.iter().zip(names) {
            // Desc checks metric and label names as the prometheus registry would.
            prometheus::core::Desc::new(
                name.clone(),
                spec.help.clone(),
                label_names.clone(),
                const_labels.iter().cloned().collect(),
            )?;
            let kind = match spec.kind {
                MetricKind::Counter => "counter",
                MetricKind::Histogram => "histogram",
                MetricKind::Gauge => "gauge",
            };
            let help = spec.help.replace('\\', "\\\\").replace('\n', "\\n");
            metrics.push(Metric { header: format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"), name });
        }
        let const_labels =
            const_labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect::<Vec<_>>().join(",");
        Ok(ProbeFamilies {
            probe: probe.to_string(),
            metrics,
            label_names,
            const_labels,
            layout,
            published,
            render,
            grouping: Mutex::new(Grouping::default()),
        })
    }

    pub fn probe(&self) -> &str {
        &self.probe
    }

    /// The families' names and kinds, for clash checks.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.metrics.iter().map(|m| m.name.as_str())
    }

    pub fn metric_count(&self) -> usize {
        self.metrics.len()
    }

    pub fn metric_name(&self, index: usize) -> &str {
        &self.metrics[index].name
    }

    /// Writes metric `index` (nothing while it has no series).
    pub fn encode(&self, index: usize, out: &mut String) {
        let mut grouping = self.grouping.lock().unwrap_or_else(|e| e.into_inner());
        self.regroup(&mut grouping);
        if grouping.groups.is_empty() {
            return;
        }
        let metric = &self.metrics[index];
        out.push_str(&metric.header);
        let mut cells = Vec::new();
        for (labels, entries) in &grouping.groups {
            let mut carried = entries.iter().filter(|e| e.overflow || self.render.carries(index, &e.key)).peekable();
            let Some(first) = carried.peek() else { continue };
            cells.clear();
            cells.resize(first.cells.len(), 0);
            for entry in carried {
                self.layout.merge_into(&mut cells, &entry.cells);
            }
            self.layout.write(index, out, &metric.name, labels, &cells);
        }
    }

    fn regroup(&self, grouping: &mut Grouping) {
        // Checked before taking a snapshot: most scrapes see no new series,
        // and a snapshot clones every entry's handle.
        if grouping.generation == Some(self.published.generation()) {
            return;
        }
        let (generation, entries) = self.published.snapshot();
        let mut complete = true;
        let mut rendered: Vec<(Arc<str>, Arc<Entry>)> = Vec::with_capacity(entries.len());
        for entry in entries {
            let labels = match entry.rendered.get() {
                Some(labels) => labels.clone(),
                None => match self.render_entry(&entry) {
                    Some(labels) => entry.rendered.get_or_init(|| labels).clone(),
                    None => {
                        complete = false;
                        continue;
                    }
                },
            };
            rendered.push((labels, entry));
        }
        rendered.sort_by(|a, b| a.0.cmp(&b.0));
        let mut groups: Vec<(Arc<str>, Vec<Arc<Entry>>)> = Vec::with_capacity(rendered.len());
        for (labels, entry) in rendered {
            match groups.last_mut() {
                Some((last, members)) if *last == labels => members.push(entry),
                _ => groups.push((labels, vec![entry])),
            }
        }
        // With a series left out, group again at the next scrape.
        *grouping = Grouping { generation: complete.then_some(generation), groups };
    }

    fn render_entry(&self, entry: &Entry) -> Option<Arc<str>> {
        let values = if entry.overflow {
            vec![OVERFLOW.to_string(); self.label_names.len()]
        } else {
            self.render.values(&entry.key)?
        };
        let mut out = String::new();
        for (name, value) in self.label_names.iter().zip(&values) {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{name}=\"{}\"", escape(value));
        }
        if !self.const_labels.is_empty() {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&self.const_labels);
        }
        Some(out.into())
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
pub fn escape(v: &str) -> String {
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
    use crate::metrics::series::{Limits, SeriesTable, TableCounters};

    /// Renders the event part of the key, collapsing 1 and 2 into one value
    /// as an enricher might (two cgroups that are both gone).
    struct ByEvent;
    impl RenderLabels for ByEvent {
        fn values(&self, key: &Key) -> Option<Vec<String>> {
            match key.event {
                9 => None,
                1 | 2 => Some(vec!["same".to_string()]),
                n => Some(vec![format!("k{n}")]),
            }
        }
    }

    fn setup(limit: usize) -> (SeriesTable, ProbeFamilies) {
        let specs = [MetricSpec::counter("c_total", "help")];
        let layout = Arc::new(Layout::new(&specs, &crate::spec::Buckets::Exp2));
        let counters = TableCounters { dropped: vec![], expired: vec![] };
        let table = SeriesTable::new(layout.clone(), Limits { series: limit, ttl: None }, counters);
        let families = ProbeFamilies::new(
            "p",
            &specs,
            vec!["c_total".into()],
            vec!["k".into()],
            1,
            &[("node".into(), "n\"1".into())],
            layout,
            table.published(),
            Arc::new(ByEvent),
        )
        .expect("families");
        (table, families)
    }

    fn encode(f: &ProbeFamilies) -> String {
        let mut out = String::new();
        f.encode(0, &mut out);
        out
    }

    #[test]
    fn keys_rendering_alike_are_merged_and_sorted() {
        let (mut t, f) = setup(10);
        assert_eq!(encode(&f), "", "no series, no header");
        for k in [3, 1, 2, 2] {
            t.record(Key { event: k, ..Key::default() }, &[1]);
        }
        assert_eq!(
            encode(&f),
            "# HELP c_total help\n# TYPE c_total counter\n\
             c_total{k=\"k3\",node=\"n\\\"1\"} 1\n\
             c_total{k=\"same\",node=\"n\\\"1\"} 3\n"
        );
    }

    #[test]
    fn series_not_yet_known_wait_for_a_later_scrape() {
        let (mut t, f) = setup(10);
        t.record(Key { event: 9, ..Key::default() }, &[1]);
        t.record(Key { event: 3, ..Key::default() }, &[1]);
        let out = encode(&f);
        assert!(out.contains("k=\"k3\"") && !out.contains("k9"), "{out}");
        let mut grouping = f.grouping.lock().expect("lock");
        assert_eq!(grouping.generation, None, "grouped again at the next scrape");
        f.regroup(&mut grouping);
        assert_eq!(grouping.groups.len(), 1);
    }

    #[test]
    fn overflow_renders_every_label_as_overflow() {
        let (mut t, f) = setup(1);
        t.record(Key { event: 5, ..Key::default() }, &[1]);
        t.record(Key { event: 6, ..Key::default() }, &[1]);
        let out = encode(&f);
        assert!(out.contains("c_total{k=\"overflow\",node=\"n\\\"1\"} 1\n"), "{out}");
        assert!(out.contains("c_total{k=\"k5\",node=\"n\\\"1\"} 1\n"), "{out}");
    }

    #[test]
    fn label_count_mismatch_is_an_error() {
        let specs = [MetricSpec::counter("c_total", "help")];
        let layout = Arc::new(Layout::new(&specs, &crate::spec::Buckets::Exp2));
        let published = Arc::new(Published::default());
        let err = ProbeFamilies::new(
            "p",
            &specs,
            vec!["c_total".into()],
            vec!["a".into(), "b".into()],
            1,
            &[],
            layout,
            published,
            Arc::new(ByEvent),
        );
        assert!(matches!(err, Err(FamilyError::LabelCount { got: 1, want: 2 })));
    }
}
