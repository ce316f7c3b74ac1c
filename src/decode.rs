//! Ring buffer records to series keys and metric values. Every record
//! starts with the common header (`struct event_header` in common.h); the
//! rest is the probe's own, decoded by the probe's `Decoder`.

use std::ops::Range;

use plain::Plain;

// A skeleton with no programs: the generated program loop is empty.
#[allow(clippy::never_loop, clippy::match_single_binding)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/types.skel.rs"));
}

/// The header every record starts with, as the skeleton generates it.
pub type Header = skel::types::event_header;
/// The key of an in-kernel aggregation table.
pub type AggKey = skel::types::agg_key;

// SAFETY: C structs of integers and char arrays; any bytes are valid.
unsafe impl Plain for Header {}
unsafe impl Plain for AggKey {}

/// Most metrics one probe has: every event carries one value per metric.
pub const MAX_METRICS: usize = 4;

/// A histogram value that observes nothing: for probes whose records are
/// of several kinds, each feeding only some of its metrics.
pub const NOT_OBSERVED: u64 = u64::MAX;

/// What a probe's decoder makes of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The probe's part of the series key: everything its own labels are
    /// rendered from, and nothing else (so that labels that are off do not
    /// split series).
    pub key: u64,
    /// One value per metric, in spec order: added to a counter, observed
    /// by a histogram (unless `NOT_OBSERVED`).
    pub values: [u64; MAX_METRICS],
}

/// Turns a probe's records into keys and values, and keys back into label
/// values. Shared by the ring reader and scrapes, so stateless.
pub trait Decoder: Send + Sync {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError>;
    /// The value of the probe's event label `label` for a key it made.
    fn label(&self, label: &str, key: u64) -> String;
    /// The metrics (spec order) a key counts, and so the ones its series
    /// shows; `Decoded::values` start at the first. All of them unless a
    /// probe's metrics count different kinds of events.
    fn metrics(&self, _key: u64) -> Range<usize> {
        0..MAX_METRICS
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("record of {got} bytes cannot hold a {want}-byte event (or is misaligned)")]
pub struct DecodeError {
    pub got: usize,
    pub want: usize,
}

/// Views a ring buffer record as the probe's event type, without copying.
/// The skeleton's generated type is the only definition of the layout.
pub fn decode<T: Plain>(data: &[u8]) -> Result<&T, DecodeError> {
    plain::from_bytes(data).map_err(|_| DecodeError { got: data.len(), want: std::mem::size_of::<T>() })
}

/// The comm bytes of a header, as unsigned bytes.
pub fn header_comm(header: &Header) -> [u8; 16] {
    header.comm.map(|c| c as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    struct Sample {
        a: u64,
        b: u32,
    }
    unsafe impl Plain for Sample {}

    #[repr(C, align(8))]
    struct Aligned([u8; 24]);

    #[test]
    fn decode_reads_in_place_and_rejects_short_records() {
        let mut buf = Aligned([0; 24]);
        buf.0[..8].copy_from_slice(&7u64.to_ne_bytes());
        buf.0[8..12].copy_from_slice(&9u32.to_ne_bytes());
        let s: &Sample = decode(&buf.0[..16]).expect("16 bytes hold a Sample");
        assert_eq!((s.a, s.b), (7, 9));
        assert_eq!(decode::<Sample>(&buf.0[..8]).unwrap_err(), DecodeError { got: 8, want: 16 });
    }

    #[test]
    fn header_is_the_c_layout() {
        assert_eq!(std::mem::size_of::<Header>(), 32);
        assert_eq!(std::mem::offset_of!(Header, cgroup_id), 0);
        assert_eq!(std::mem::offset_of!(Header, tgid), 8);
        assert_eq!(std::mem::offset_of!(Header, comm), 16);
    }
}
