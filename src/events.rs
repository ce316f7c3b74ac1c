//! The one ring buffer consumer every probe shares: a dedicated thread
//! drains all rings, decodes each record and hands it to its probe's sink.
//! Probes submit most records without a wakeup (see `wakeup_bytes` in
//! common.h), so the thread also drains on a timer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use libbpf_rs::{MapHandle, RingBufferBuilder};
use plain::Plain;
use prometheus::IntCounter;

use crate::metrics::Counter;

/// Turns one probe's events into metric updates.
pub trait EventSink: Send {
    fn handle(&mut self, data: &[u8]) -> Result<(), DecodeError>;
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

/// One probe's ring and where its events go.
pub struct Source {
    pub probe: &'static str,
    pub ring: MapHandle,
    pub sink: Box<dyn EventSink>,
    pub received: Counter,
    pub decode_errors: IntCounter,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("setting up the ring buffer reader for probe `{probe}` failed: {source}")]
    Setup { probe: &'static str, source: libbpf_rs::Error },
    #[error("the ring buffer reader thread could not start: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("the ring buffer reader thread stopped before it was ready")]
    Died,
}

pub struct Consumer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Consumer {
    /// Starts the reader thread; returns once every ring is mapped.
    pub fn start(sources: Vec<Source>, poll_interval: Duration) -> Result<Consumer, ConsumerError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sonde-events".into())
            .spawn(move || run(sources, poll_interval, &thread_stop, ready_tx))?;
        let consumer = Consumer { stop, thread: Some(thread) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(consumer),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(ConsumerError::Died),
        }
    }

    /// Drains what is left in the rings and stops the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the ring buffer reader thread panicked");
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(
    sources: Vec<Source>,
    poll_interval: Duration,
    stop: &AtomicBool,
    ready: mpsc::Sender<Result<(), ConsumerError>>,
) {
    let mut rings = Vec::with_capacity(sources.len());
    let mut handlers = Vec::with_capacity(sources.len());
    for source in sources {
        rings.push((source.probe, source.ring));
        handlers.push((source.sink, source.received, source.decode_errors));
    }
    let mut builder = RingBufferBuilder::new();
    for ((probe, ring), (mut sink, received, decode_errors)) in rings.iter().zip(handlers) {
        let added = builder.add(ring, move |data: &[u8]| {
            prefetch_ahead(data);
            received.add(1);
            if let Err(err) = sink.handle(data) {
                decode_errors.inc();
                tracing::trace!(probe = *probe, error = %err, "undecodable event");
            }
            0
        });
        if let Err(source) = added {
            let _ = ready.send(Err(ConsumerError::Setup { probe, source }));
            return;
        }
    }
    let ring_buffer = match builder.build() {
        Ok(rb) => rb,
        Err(source) => {
            let _ = ready.send(Err(ConsumerError::Setup { probe: "all", source }));
            return;
        }
    };
    for (index, (probe, ring)) in rings.iter().enumerate() {
        if let Err(err) = edge_triggered(ring_buffer.epoll_fd(), ring, index) {
            let source = libbpf_rs::Error::from(err);
            let _ = ready.send(Err(ConsumerError::Setup { probe, source }));
            return;
        }
    }
    let _ = ready.send(Ok(()));

    while !stop.load(Ordering::Relaxed) {
        // A wakeup or the timer: either way drain every ring, because
        // records submitted without a wakeup raise no epoll event.
        let rc = ring_buffer.poll_raw(poll_interval);
        if rc < 0 && rc != -libc::EINTR {
            tracing::warn!(errno = -rc, "polling the ring buffers failed");
            std::thread::sleep(poll_interval);
        }
        let rc = ring_buffer.consume_raw();
        if rc < 0 && rc != -libc::EINTR {
            tracing::warn!(errno = -rc, "draining the ring buffers failed");
        }
    }
    ring_buffer.consume_raw();
}

/// Asks for the ring's memory a few records ahead of the one being read.
/// Records were just written by another CPU, so each cache line is a
/// cross-core transfer; requesting the next ones early overlaps them.
/// A prefetch never faults, so running past the mapping is harmless.
#[inline(always)]
fn prefetch_ahead(data: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        const AHEAD: usize = 256;
        let ahead = data.as_ptr().wrapping_add(AHEAD);
        // SAFETY: prefetch is a hint; it does not access memory
        // architecturally and cannot fault.
        unsafe { std::arch::x86_64::_mm_prefetch(ahead.cast(), std::arch::x86_64::_MM_HINT_T0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Switches a ring's registration in libbpf's epoll set to edge-triggered.
///
/// Level-triggered, a ring reads as ready whenever any byte waits in it,
/// which under steady load is always: the reader would spin between
/// epoll_wait and tiny drains (measured: two thirds of its CPU in
/// epoll_wait). Edge-triggered, it sleeps until a producer forces a wakeup
/// (one per `wakeup_bytes`) or the poll timer fires, and then drains
/// everything. libbpf keys each registration by the ring's index, in the
/// order the rings were added; that key is kept.
fn edge_triggered(epoll_fd: i32, ring: &MapHandle, index: usize) -> std::io::Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut event = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: index as u64 };
    // SAFETY: both descriptors are open (the ring buffer manager and the
    // map outlive this call) and `event` is a valid epoll_event.
    let rc = unsafe { libc::epoll_ctl(epoll_fd, libc::EPOLL_CTL_MOD, ring.as_fd().as_raw_fd(), &mut event) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
}
