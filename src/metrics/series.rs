//! A probe's series: label keys to cells. The ring reader owns the table
//! and is the only writer; scrapes see the entries through `Published`.
//!
//! The hot path hashes a small fixed-size key and bumps cells; it never
//! formats or allocates once a key has been seen. Label values are rendered
//! from the key at scrape time (see `family.rs`), so enrichers never run on
//! the event path. Past the series limit, new keys share one overflow
//! series. Keys not updated for `series_ttl` are removed, which frees their
//! place under the limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rustc_hash::FxBuildHasher;

use super::cells::{Cells, Layout};

/// Everything a series' label values are rendered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Key {
    /// `labels::comm_key` of the task's comm, when the comm label is on.
    pub comm: u128,
    /// The task's cgroup id, when a cgroup-derived label is on.
    pub cgroup: u64,
    /// The probe's own part, from its decoder.
    pub event: u64,
    /// The task's process id, when the pid label is on.
    pub pid: u32,
}

/// One series as scrapes see it.
pub struct Entry {
    pub key: Key,
    /// The series that absorbs keys past the limit.
    pub overflow: bool,
    pub cells: Cells,
    /// The rendered label set, cached at the first scrape that sees it:
    /// enrichment may not be possible later (a cgroup that is gone), and a
    /// series' labels must not change under it.
    pub rendered: OnceLock<Arc<str>>,
}

/// The entries of one table, for scrapes. Locked by the reader only when a
/// series is created or removed.
#[derive(Default)]
pub struct Published {
    slots: Mutex<Vec<Option<Arc<Entry>>>>,
    /// Bumped on every change, so scrapes can reuse their grouping.
    generation: AtomicU64,
}

impl Published {
    /// The current generation: it moves whenever a series is added or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The live entries and the generation they belong to.
    pub fn snapshot(&self) -> (u64, Vec<Arc<Entry>>) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.load(Ordering::Acquire);
        (generation, slots.iter().flatten().cloned().collect())
    }

    fn set(&self, slot: u32, entry: Option<Arc<Entry>>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slot as usize;
        if slots.len() <= slot {
            slots.resize(slot + 1, None);
        }
        slots[slot] = entry;
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Bounds on a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Keys with a series of their own; later ones fold into `overflow`.
    pub series: usize,
    /// Series not updated for this long are removed; None keeps them.
    pub ttl: Option<Duration>,
}

impl Limits {
    /// How often the reader looks for expired series: often enough that a
    /// series goes within about 1.5 × ttl, rarely enough to cost nothing.
    pub fn sweep_interval(&self) -> Option<Duration> {
        self.ttl.map(|ttl| (ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(60)))
    }
}

/// Self-metric counters of a table, one per metric of the probe.
pub struct TableCounters {
    pub dropped: Vec<IntCounter>,
    pub expired: Vec<IntCounter>,
}

/// Folded keys remembered (so counted once each in `series_dropped`): the
/// series limit or this many, whichever is more. Past that, each event of
/// an unremembered key counts, which keeps memory bounded under a
/// cardinality explosion.
const FOLDED_MEMORY: usize = 4096;

struct Slot {
    entry: Arc<Entry>,
    /// `Layout::activity` at the last sweep that saw it change.
    activity: u64,
    idle_since: Instant,
}

pub struct SeriesTable {
    /// Key to its slot; folded keys point at the overflow slot.
    index: HashMap<Key, u32, FxBuildHasher>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Series of their own (not counting overflow).
    live: usize,
    overflow: Option<u32>,
    layout: Arc<Layout>,
    limits: Limits,
    published: Arc<Published>,
    counters: TableCounters,
}

impl SeriesTable {
    pub fn new(layout: Arc<Layout>, limits: Limits, counters: TableCounters) -> Self {
        SeriesTable {
            index: HashMap::with_hasher(FxBuildHasher),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            overflow: None,
            layout,
            limits,
            published: Arc::new(Published::default()),
            counters,
        }
    }

    pub fn published(&self) -> Arc<Published> {
        self.published.clone()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Records one event for `key`. Returns true when the key got a new
    /// series of its own (so enrichers can be told about it).
    #[inline]
    pub fn record(&mut self, key: Key, values: &[u64]) -> bool {
        self.record_from(key, 0, values)
    }

    /// As `record`, with values for the metrics from `first` on.
    #[inline]
    pub fn record_from(&mut self, key: Key, first: usize, values: &[u64]) -> bool {
        if let Some(&slot) = self.index.get(&key) {
            if let Some(s) = &self.slots[slot as usize] {
                self.layout.record_from(&s.entry.cells, first, values);
                return false;
            }
        }
        self.record_new(key, first, values)
    }

    #[cold]
    fn record_new(&mut self, key: Key, first: usize, values: &[u64]) -> bool {
        let (slot, new) = if self.live < self.limits.series {
            self.live += 1;
            (self.add(key, false), true)
        } else {
            for d in &self.counters.dropped {
                d.inc();
            }
            let slot = self.overflow_slot();
            if self.index.len() < self.limits.series.saturating_add(FOLDED_MEMORY.max(self.limits.series)) {
                self.index.insert(key, slot);
            }
            (slot, false)
        };
        if let Some(s) = &self.slots[slot as usize] {
            self.layout.record_from(&s.entry.cells, first, values);
        }
        new
    }

    /// Sets `key`'s cells to `cells`: for counts kept in the kernel, read
    /// whole at each scrape. Returns true for a new series. The caller is
    /// the table's only writer, as the ring reader is for `record`.
    pub fn set(&mut self, key: Key, cells: &[u64]) -> bool {
        let (slot, new) = match self.index.get(&key) {
            Some(&slot) => (slot, false),
            None => {
                self.live += 1;
                (self.add(key, false), true)
            }
        };
        self.store(slot, cells);
        new
    }

    /// Whether `key` has a series of its own.
    pub fn has(&self, key: &Key) -> bool {
        self.index.get(key).and_then(|&slot| self.slots[slot as usize].as_ref()).is_some_and(|s| !s.entry.overflow)
    }

    /// Whether a new key would be folded into the overflow series.
    pub fn is_full(&self) -> bool {
        self.live >= self.limits.series
    }

    /// Counts one more label set folded into the overflow series.
    pub fn count_dropped(&self) {
        for d in &self.counters.dropped {
            d.inc();
        }
    }

    /// Sets the overflow series' cells (kept in the kernel too).
    pub fn set_overflow(&mut self, cells: &[u64]) {
        let slot = self.overflow_slot();
        self.store(slot, cells);
    }

    /// The overflow series' slot, created the first time it is needed.
    fn overflow_slot(&mut self) -> u32 {
        match self.overflow {
            Some(slot) => slot,
            None => {
                let slot = self.add(Key::default(), true);
                self.overflow = Some(slot);
                slot
            }
        }
    }

    fn store(&self, slot: u32, cells: &[u64]) {
        if let Some(s) = &self.slots[slot as usize] {
            for (cell, &v) in s.entry.cells.iter().zip(cells) {
                cell.store(v, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn add(&mut self, key: Key, overflow: bool) -> u32 {
        let entry = Arc::new(Entry { key, overflow, cells: self.layout.cells(), rendered: OnceLock::new() });
        let slot = Slot { entry: entry.clone(), activity: 0, idle_since: Instant::now() };
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        if !overflow {
            self.index.insert(key, index);
        }
        self.published.set(index, Some(entry));
        index
    }

    /// Removes series idle for the ttl, and returns the keys removed (the
    /// overflow series' as `None`). Called by the table's writer every
    /// `Limits::sweep_interval`.
    pub fn sweep(&mut self, now: Instant) -> Vec<Option<Key>> {
        let Some(ttl) = self.limits.ttl else { return Vec::new() };
        let mut expired = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            let activity = Layout::activity(&s.entry.cells);
            if activity != s.activity || self.layout.holds_level(&s.entry.cells) {
                s.activity = activity;
                s.idle_since = now;
            } else if now.duration_since(s.idle_since) >= ttl {
                expired.push(i as u32);
            }
        }
        if expired.is_empty() {
            return Vec::new();
        }
        let mut keys = Vec::with_capacity(expired.len());
        for &i in &expired {
            let Some(s) = self.slots[i as usize].take() else { continue };
            if s.entry.overflow {
                self.overflow = None;
                keys.push(None);
            } else {
                self.index.remove(&s.entry.key);
                self.live -= 1;
                keys.push(Some(s.entry.key));
            }
            self.published.set(i, None);
            self.free.push(i);
            for c in &self.counters.expired {
                c.inc();
            }
        }
        // Room was freed (or the overflow series went): keys folded
        // earlier get a fresh chance at a series of their own.
        if self.index.len() > self.live {
            self.index.retain(|_, slot| self.slots[*slot as usize].as_ref().is_some_and(|s| !s.entry.overflow));
        }
        keys
    }

    /// Series of their own (not counting overflow).
    pub fn live(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::MetricSpec;

    fn counters() -> (TableCounters, IntCounter, IntCounter) {
        let dropped = IntCounter::new("d", "d").expect("counter");
        let expired = IntCounter::new("e", "e").expect("counter");
        (TableCounters { dropped: vec![dropped.clone()], expired: vec![expired.clone()] }, dropped, expired)
    }

    fn table(series: usize, ttl: Option<Duration>) -> (SeriesTable, IntCounter, IntCounter) {
        let layout = Arc::new(Layout::new(&[MetricSpec::counter("c_total", "c")], &crate::spec::Buckets::Exp2));
        let (c, dropped, expired) = counters();
        (SeriesTable::new(layout, Limits { series, ttl }, c), dropped, expired)
    }

    fn key(event: u64) -> Key {
        Key { event, ..Key::default() }
    }

    fn values(table: &SeriesTable) -> Vec<(Option<u64>, u64)> {
        let (_, entries) = table.published.snapshot();
        let mut v: Vec<_> = entries
            .iter()
            .map(|e| ((!e.overflow).then_some(e.key.event), e.cells[0].load(Ordering::Relaxed)))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn one_series_per_key() {
        let (mut t, dropped, _) = table(10, None);
        assert!(t.record(key(7), &[1]));
        for _ in 0..4 {
            assert!(!t.record(key(7), &[1]));
        }
        assert_eq!(values(&t), vec![(Some(7), 5)]);
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn folds_past_the_limit_and_counts_each_key_once() {
        let (mut t, dropped, _) = table(2, None);
        let keys = 2 + FOLDED_MEMORY as u64 + 1;
        for k in 0..keys {
            for _ in 0..3 {
                t.record(key(k), &[1]);
            }
        }
        assert_eq!(t.live(), 2);
        assert_eq!(values(&t), vec![(None, 3 * (keys - 2)), (Some(0), 3), (Some(1), 3)]);
        // folded keys up to the memory bound count once each; the one past
        // it counts per event
        assert_eq!(dropped.get(), FOLDED_MEMORY as u64 + 3);
    }

    #[test]
    fn idle_series_expire_and_free_their_place() {
        let ttl = Duration::from_secs(10);
        let (mut t, _, expired) = table(1, Some(ttl));
        let start = Instant::now();
        t.record(key(1), &[1]);
        t.record(key(2), &[1]); // folded: the limit is 1
        t.sweep(start);
        assert_eq!(values(&t), vec![(None, 1), (Some(1), 1)]);
        // key 1 stays busy, overflow goes idle
        t.record(key(1), &[1]);
        t.sweep(start + ttl / 2);
        t.sweep(start + ttl + Duration::from_secs(1));
        assert_eq!(values(&t), vec![(Some(1), 2)], "overflow expired, key 1 kept");
        assert_eq!(expired.get(), 1);
        t.sweep(start + 2 * ttl);
        assert_eq!(values(&t), vec![]);
        assert_eq!(expired.get(), 2);
        // key 2 now gets the freed place, starting from zero
        assert!(t.record(key(2), &[1]));
        assert_eq!(values(&t), vec![(Some(2), 1)]);
    }

    #[test]
    fn published_generation_moves_on_change() {
        let (mut t, _, _) = table(10, None);
        let (g0, _) = t.published.snapshot();
        t.record(key(1), &[1]);
        let (g1, _) = t.published.snapshot();
        t.record(key(1), &[1]);
        let (g2, _) = t.published.snapshot();
        assert!(g1 > g0);
        assert_eq!(g1, g2, "updates to a known key change nothing for scrapes");
    }
}
