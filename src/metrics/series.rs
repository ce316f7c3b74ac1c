//! Metric handles resolved once per label set. The hot path hashes a small
//! fixed-size key and bumps an atomic; it never formats or allocates once a
//! label set has been seen. Past the series limit, new label sets share one
//! `overflow` series, created the first time it is needed.

use std::collections::HashMap;
use std::hash::Hash;

use prometheus::IntCounter;
use rustc_hash::FxBuildHasher;

/// The label value of the series that absorbs label sets past the limit.
pub const OVERFLOW: &str = "overflow";

/// Folded label sets remembered (so counted once each in `series_dropped`):
/// the series limit or this many, whichever is more. Past that, each event
/// of an unremembered set counts, which keeps memory bounded under a
/// cardinality explosion.
const FOLDED_MEMORY: usize = 4096;

/// Makes a label set's handles from its label values.
pub type Build<H> = Box<dyn Fn(&[String]) -> H + Send>;

pub struct SeriesCache<K, H> {
    /// Key to its slot in `handles`; folded keys point at the overflow slot.
    index: HashMap<K, u32, FxBuildHasher>,
    handles: Vec<H>,
    live: usize,
    limit: usize,
    label_count: usize,
    build: Build<H>,
    overflow: Option<u32>,
    dropped: Vec<IntCounter>,
}

impl<K: Hash + Eq, H> SeriesCache<K, H> {
    pub fn new(limit: usize, label_count: usize, build: Build<H>, dropped: Vec<IntCounter>) -> Self {
        Self {
            index: HashMap::with_hasher(FxBuildHasher),
            handles: Vec::new(),
            live: 0,
            limit,
            label_count,
            build,
            overflow: None,
            dropped,
        }
    }

    /// The handles for `key`; `values` gives its label values the first
    /// time the key is seen. A seen key costs one hash lookup: no entry API,
    /// which would also check capacity on every call.
    #[inline]
    pub fn get(&mut self, key: K, values: impl FnOnce() -> Vec<String>) -> &H {
        match self.index.get(&key) {
            Some(&slot) => &self.handles[slot as usize],
            None => self.insert(key, values),
        }
    }

    #[cold]
    fn insert(&mut self, key: K, values: impl FnOnce() -> Vec<String>) -> &H {
        if self.live < self.limit {
            self.live += 1;
            return self.push(key, (self.build)(&values()));
        }
        for d in &self.dropped {
            d.inc();
        }
        let slot = match self.overflow {
            Some(slot) => slot,
            None => {
                let handles = (self.build)(&vec![OVERFLOW.to_string(); self.label_count]);
                self.handles.push(handles);
                let slot = (self.handles.len() - 1) as u32;
                self.overflow = Some(slot);
                slot
            }
        };
        // Folded keys are remembered too (up to FOLDED_MEMORY of them) so
        // each dropped label set is counted once.
        if self.index.len() < self.limit.saturating_add(FOLDED_MEMORY.max(self.limit)) {
            self.index.insert(key, slot);
        }
        &self.handles[slot as usize]
    }

    fn push(&mut self, key: K, handles: H) -> &H {
        self.handles.push(handles);
        let slot = self.handles.len() - 1;
        self.index.insert(key, slot as u32);
        &self.handles[slot]
    }

    /// Label sets with their own series.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::IntCounterVec;

    fn family() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("t", "test"), &["k"]).expect("valid family")
    }

    fn cache(limit: usize, family: &IntCounterVec, dropped: &IntCounter) -> SeriesCache<u32, IntCounter> {
        let f = family.clone();
        SeriesCache::new(limit, 1, Box::new(move |v: &[String]| f.with_label_values(v)), vec![dropped.clone()])
    }

    #[test]
    fn resolves_each_key_once() {
        let family = family();
        let dropped = IntCounter::new("d", "d").expect("valid counter");
        let mut cache = cache(10, &family, &dropped);
        let mut made = 0;
        for _ in 0..5 {
            cache
                .get(7, || {
                    made += 1;
                    vec!["seven".into()]
                })
                .inc();
        }
        assert_eq!(made, 1);
        assert_eq!(family.with_label_values(&["seven"]).get(), 5);
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn folds_past_the_limit_and_counts_each_label_set_once() {
        let family = family();
        let dropped = IntCounter::new("d", "d").expect("valid counter");
        let mut cache = cache(2, &family, &dropped);
        let keys = 2 + FOLDED_MEMORY as u32 + 1;
        for key in 0..keys {
            for _ in 0..3 {
                cache.get(key, || vec![format!("k{key}")]).inc();
            }
        }
        assert_eq!(cache.live(), 2);
        assert_eq!(family.with_label_values(&["k0"]).get(), 3);
        assert_eq!(family.with_label_values(&["k1"]).get(), 3);
        assert_eq!(family.with_label_values(&[OVERFLOW]).get(), 3 * u64::from(keys - 2));
        // folded keys up to the memory bound count once each; the one past
        // it counts per event
        assert_eq!(dropped.get(), FOLDED_MEMORY as u64 + 3);
    }

    #[test]
    fn no_overflow_series_until_needed() {
        let family = family();
        let dropped = IntCounter::new("d", "d").expect("valid counter");
        let mut cache = cache(2, &family, &dropped);
        cache.get(1, || vec!["one".into()]).inc();
        use prometheus::core::Collector;
        let names: Vec<String> = family
            .collect()
            .iter()
            .flat_map(|mf| mf.get_metric().iter().map(|m| m.get_label()[0].value().to_string()).collect::<Vec<_>>())
            .collect();
        assert_eq!(names, vec!["one".to_string()]);
    }
}
