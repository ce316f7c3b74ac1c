//! The one ring buffer reader every probe shares: a dedicated thread owns
//! an epoll set of its own with every probe's ring, drains all of them on a
//! wakeup or on a timer (producers submit most records without a wakeup,
//! see `wakeup_bytes` in common.h), and hands each record to its probe's
//! sink. Probes are added and removed while it runs (reload), through a
//! command queue and an eventfd that wakes the thread.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libbpf_rs::{MapHandle, RingBuffer, RingBufferBuilder};
use prometheus::IntCounter;

use crate::decode::DecodeError;

/// Turns one probe's records into metric updates; lives on the reader
/// thread.
pub trait Sink: Send {
    fn handle(&mut self, record: &[u8]) -> Result<(), DecodeError>;
    /// Called after every drain: housekeeping such as series expiry.
    fn tick(&mut self, now: Instant);
}

/// One probe's ring and where its records go.
pub struct Source {
    pub probe: String,
    pub ring: MapHandle,
    pub sink: Box<dyn Sink>,
    pub received: IntCounter,
    pub decode_errors: IntCounter,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("setting up the ring buffer reader failed: {0}")]
    Setup(#[source] std::io::Error),
    #[error("reading the ring buffer of probe `{probe}` failed: {source}")]
    Ring { probe: String, source: libbpf_rs::Error },
    #[error("the ring buffer reader thread is gone")]
    Gone,
}

enum Command {
    Add(Source, mpsc::Sender<Result<(), ReaderError>>),
    Remove(String, mpsc::Sender<()>),
}

pub struct Reader {
    commands: mpsc::Sender<Command>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    pub fn start(poll_interval: Duration) -> Result<Reader, ReaderError> {
        let epoll = epoll_create().map_err(ReaderError::Setup)?;
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake < 0 {
            return Err(ReaderError::Setup(std::io::Error::last_os_error()));
        }
        // SAFETY: a descriptor just created and owned by nobody else.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        epoll_add(&epoll, wake.as_raw_fd(), WAKE_TOKEN, false).map_err(ReaderError::Setup)?;
        let wake_fd = wake.try_clone().map_err(ReaderError::Setup)?;
        let (commands, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sonde-events".into())
            .spawn(move || Thread { epoll, wake: wake_fd, queue, rings: Vec::new(), poll_interval }.run())
            .map_err(ReaderError::Setup)?;
        Ok(Reader { commands, wake, thread: Some(thread) })
    }

    /// Starts reading a probe's ring; returns once the reader has it.
    pub fn add(&self, source: Source) -> Result<(), ReaderError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Add(source, tx))?;
        rx.recv().map_err(|_| ReaderError::Gone)?
    }

    /// Drains what is left of a probe's ring and drops it with its sink.
    /// Detach the probe's programs first, so that nothing more arrives.
    pub fn remove(&self, probe: &str) -> Result<(), ReaderError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Remove(probe.to_string(), tx))?;
        rx.recv().map_err(|_| ReaderError::Gone)
    }

    fn send(&self, command: Command) -> Result<(), ReaderError> {
        self.commands.send(command).map_err(|_| ReaderError::Gone)?;
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to an eventfd we own. A
        // full counter (EAGAIN) already means "wake up".
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Drains every ring one last time and stops the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        // Closing the command queue is the stop signal.
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.commands, closed));
        self.wake();
        if thread.join().is_err() {
            tracing::error!("the ring buffer reader thread panicked");
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shutdown();
    }
}

const WAKE_TOKEN: u64 = u64::MAX;

struct Ring {
    probe: String,
    /// Keeps the map's descriptor (registered in the epoll set) open.
    map: MapHandle,
    buffer: RingBuffer<'static>,
    sink: Rc<RefCell<Box<dyn Sink>>>,
    /// Counted per record on this thread, published once per drain: a
    /// shared atomic per record would cost more than the record.
    received_here: Rc<Cell<u64>>,
    received: IntCounter,
}

struct Thread {
    epoll: OwnedFd,
    wake: OwnedFd,
    queue: mpsc::Receiver<Command>,
    rings: Vec<Ring>,
    poll_interval: Duration,
}

impl Thread {
    fn run(mut self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
        let timeout = i32::try_from(self.poll_interval.as_millis()).unwrap_or(i32::MAX);
        loop {
            // A wakeup or the timer: either way drain every ring, because
            // records submitted without a wakeup raise no epoll event.
            // SAFETY: `events` is a valid buffer of the given length.
            let n =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, timeout) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    tracing::warn!(error = %err, "waiting for ring buffer events failed");
                    std::thread::sleep(self.poll_interval);
                }
            }
            self.drain();
            if !self.commands() {
                self.drain();
                return;
            }
            let now = Instant::now();
            for ring in &self.rings {
                ring.sink.borrow_mut().tick(now);
            }
        }
    }

    fn drain(&self) {
        for ring in &self.rings {
            let rc = ring.buffer.consume_raw();
            if rc < 0 && rc != -libc::EINTR {
                tracing::warn!(probe = ring.probe, errno = -rc, "draining a ring buffer failed");
            }
            ring.received.inc_by(ring.received_here.replace(0));
        }
    }

    /// Applies queued commands; false once the queue is closed (stop).
    fn commands(&mut self) -> bool {
        let mut counter = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a valid buffer; EAGAIN when
        // nothing was written is fine.
        unsafe { libc::read(self.wake.as_raw_fd(), counter.as_mut_ptr().cast(), counter.len()) };
        loop {
            match self.queue.try_recv() {
                Ok(Command::Add(source, reply)) => {
                    let _ = reply.send(self.add(source));
                }
                Ok(Command::Remove(probe, reply)) => {
                    self.remove(&probe);
                    let _ = reply.send(());
                }
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn add(&mut self, source: Source) -> Result<(), ReaderError> {
        let Source { probe, ring: map, sink, received, decode_errors } = source;
        let sink = Rc::new(RefCell::new(sink));
        let received_here = Rc::new(Cell::new(0u64));
        let (cb_sink, cb_received, cb_probe) = (sink.clone(), received_here.clone(), probe.clone());
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&map, move |data: &[u8]| {
                prefetch_ahead(data);
                cb_received.set(cb_received.get() + 1);
                if let Err(err) = cb_sink.borrow_mut().handle(data) {
                    decode_errors.inc();
                    tracing::trace!(probe = cb_probe, error = %err, "undecodable event");
                }
                0
            })
            .map_err(|source| ReaderError::Ring { probe: probe.clone(), source })?;
        let buffer = builder.build().map_err(|source| ReaderError::Ring { probe: probe.clone(), source })?;
        let token = self.rings.len() as u64;
        epoll_add(&self.epoll, map.as_fd().as_raw_fd(), token, true).map_err(ReaderError::Setup)?;
        self.rings.push(Ring { probe, map, buffer, sink, received_here, received });
        Ok(())
    }

    fn remove(&mut self, probe: &str) {
        let Some(at) = self.rings.iter().position(|r| r.probe == probe) else { return };
        let ring = self.rings.remove(at);
        ring.buffer.consume_raw();
        ring.received.inc_by(ring.received_here.replace(0));
        // SAFETY: removes a registration of a descriptor that is still open.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                ring.map.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
    }
}

fn epoll_create() -> std::io::Result<OwnedFd> {
    // SAFETY: no memory arguments; the result is checked.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just created and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers `fd` in the reader's own epoll set. Rings are edge-triggered:
/// level-triggered, a ring reads as ready whenever any byte waits in it,
/// which under steady load is always, and the reader would spin between
/// epoll_wait and tiny drains (measured: two thirds of its CPU in
/// epoll_wait). Edge-triggered, it sleeps until a producer forces a wakeup
/// (one per `wakeup_bytes`) or the poll timer fires, and then drains
/// everything.
fn epoll_add(epoll: &OwnedFd, fd: RawFd, token: u64, edge: bool) -> std::io::Result<()> {
    let flags = if edge { libc::EPOLLIN | libc::EPOLLET } else { libc::EPOLLIN };
    let mut event = libc::epoll_event { events: flags as u32, u64: token };
    // SAFETY: both descriptors are open and `event` is a valid epoll_event.
    let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
