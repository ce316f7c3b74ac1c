//! Storage probes against real devices: `block_io` (O_DIRECT writes to a
//! real block device) and `page_faults` (fresh anonymous pages; file pages
//! read back after their page cache was dropped).
//!
//! Both need a block device under the test's files: the filesystem of the
//! temporary directory when it is on one, else a scratch disk the VM harness
//! attaches (serial `sonde-scratch`, written raw). Without either the tests
//! fail as INFRA: they never pass on a machine that could not run them.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use libtest_mimic::{Failed, Trial};

use crate::agent::{Agent, Metrics};
use crate::kernel;
use crate::workload;

pub fn trials() -> Vec<Trial> {
    let mut trials = vec![
        Trial::test("block_io_counts_direct_writes_by_disk", || block_io_direct_writes(true)),
        Trial::test("block_io_ring_mode_counts_direct_writes_by_disk", || block_io_direct_writes(false)),
        Trial::test("block_io_tracepoint_fallback_counts_direct_writes", block_io_tracepoint),
        Trial::test("page_faults_count_fresh_anonymous_pages_by_comm", page_faults_anonymous),
    ];
    // major and minor are told apart only where handle_mm_fault() can be
    // hooked; the tracepoint fallback says `unknown`
    if kernel::has_kprobes() || kernel::expects_fentry() {
        trials.push(Trial::test("page_faults_count_major_faults_of_dropped_file_pages", page_faults_major));
    }
    if kernel::has_kprobes() {
        trials.push(Trial::test("page_faults_kprobe_counts_minor_faults", page_faults_kprobe));
    }
    trials
}

/// The line the VM harness collects into the kernel matrix.
fn matrix(probe: &str, hook: &str) {
    println!("SONDE_MATRIX probe={probe} hook={hook} result=ok");
}

fn at_least(what: &str, got: f64, want: f64) -> Result<(), Failed> {
    if got >= want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want at least {want}").into())
    }
}

const PAGE: usize = 4096;

/// Where the tests put data that must reach a block device.
struct BlockTarget {
    /// A file created for the test, or a scratch disk's device node.
    path: PathBuf,
    /// The disks (as `block_io` names them) whose requests carry it.
    disks: Vec<String>,
    /// Whether `path` is the test's own file, to remove afterwards.
    owned: bool,
}

impl BlockTarget {
    fn find(tag: &str) -> Result<BlockTarget, Failed> {
        let dir = std::env::temp_dir();
        let dev = std::fs::metadata(&dir).map_err(|e| format!("stat {}: {e}", dir.display()))?.dev();
        let number = format!("{}:{}", libc::major(dev), libc::minor(dev));
        if let Some(disks) = disks_under(&Path::new("/sys/dev/block").join(&number)) {
            let path = dir.join(format!("sonde-{tag}-{}", std::process::id()));
            return Ok(BlockTarget { path, disks, owned: true });
        }
        if let Some(name) = scratch_disk() {
            return Ok(BlockTarget { path: Path::new("/dev").join(&name), disks: vec![name], owned: false });
        }
        Err(format!(
            "INFRA: no block device to test on: {} is on device {number}, which is not a block device, and no \
             scratch disk (serial sonde-scratch) is attached",
            dir.display()
        )
        .into())
    }

    /// Opened for writing (created if it is the test's file), with `flags`.
    fn open(&self, flags: i32) -> Result<File, Failed> {
        open_for_writing(&self.path, self.owned, flags)
    }
}

fn open_for_writing(path: &Path, create: bool, flags: i32) -> Result<File, Failed> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()).into())
}

impl Drop for BlockTarget {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The disks carrying the block device at `sysfs` (`/sys/dev/block/M:m`):
/// a partition's disk, or a stacked device's (device-mapper, md) members,
/// whose requests are the ones issued to drivers. None when it is not a
/// block device.
fn disks_under(sysfs: &Path) -> Option<Vec<String>> {
    let mut dir = std::fs::canonicalize(sysfs).ok()?;
    if dir.join("partition").exists() {
        dir = dir.parent()?.to_path_buf();
    }
    let members: Vec<PathBuf> =
        std::fs::read_dir(dir.join("slaves")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    if members.is_empty() {
        return devname(&dir).map(|name| vec![name]);
    }
    Some(members.iter().filter_map(|m| disks_under(m)).flatten().collect())
}

/// A sysfs block device's name as its uevent gives it.
fn devname(dir: &Path) -> Option<String> {
    let uevent = std::fs::read_to_string(dir.join("uevent")).ok()?;
    uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")).map(str::to_string)
}

/// A disk whose serial is `sonde-scratch`: attached by the VM harness for
/// these tests, so writing it raw destroys nothing.
fn scratch_disk() -> Option<String> {
    let disks = std::fs::read_dir("/sys/block").ok()?;
    disks.flatten().find_map(|disk| {
        let serial = ["serial", "device/serial"]
            .iter()
            .find_map(|f| std::fs::read_to_string(disk.path().join(f)).ok())
            .unwrap_or_default();
        (serial.trim() == "sonde-scratch").then(|| devname(&disk.path())).flatten()
    })
}

/// A page-aligned buffer of `pages` pages, as O_DIRECT needs.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn pages(pages: usize, fill: u8) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(pages * PAGE, PAGE).expect("layout");
        // SAFETY: a non-zero size; freed in Drop with the same layout.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        // SAFETY: `ptr` holds layout.size() bytes.
        unsafe { std::ptr::write_bytes(ptr, fill, layout.size()) };
        Aligned { ptr, layout }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: allocated and initialised above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `pages` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Writes `blocks` pages at distinct offsets of `file`, one O_DIRECT pwrite
/// each: each waits for its request, so none merge.
fn direct_writes(file: &File, blocks: usize) -> Result<(), String> {
    let buffer = Aligned::pages(1, 0x5a);
    for i in 0..blocks {
        let offset = (i * PAGE) as u64;
        std::os::unix::fs::FileExt::write_all_at(file, buffer.bytes(), offset)
            .map_err(|e| format!("O_DIRECT write: {e}"))?;
    }
    Ok(())
}

/// (requests, bytes) written to `disks`, summed.
fn written(metrics: &Metrics, disks: &[String]) -> (f64, f64) {
    let sum = |name: &str| -> f64 {
        disks.iter().map(|d| metrics.value(name, &[("disk", d.as_str()), ("op", "write")])).sum()
    };
    (sum("sonde_block_io_latency_seconds_count"), sum("sonde_block_io_bytes_total"))
}

/// N O_DIRECT page writes: the disk's write count grows by at least N and
/// its bytes by at least N pages. At least, not exactly: the filesystem's
/// journal and every other writer on the machine use the same disk.
fn block_io_counts(agent: &Agent, hook: &str) -> Result<(), Failed> {
    const N: usize = 32;
    check_hook(agent, "block_io", hook)?;
    let target = BlockTarget::find("blk")?;
    let (requests_before, bytes_before) = written(&agent.scrape(), &target.disks);
    let file = target.open(libc::O_DIRECT)?;
    workload::on_named_thread(&workload::unique_comm("bio"), move || direct_writes(&file, N))?;
    let requests = agent.settle(requests_before + N as f64, |m| written(m, &target.disks).0) - requests_before;
    at_least(&format!("write requests to {:?}", target.disks), requests, N as f64)?;
    let bytes = written(&agent.scrape(), &target.disks).1 - bytes_before;
    at_least(&format!("bytes written to {:?}", target.disks), bytes, (N * PAGE) as f64)?;
    let latency: f64 = target
        .disks
        .iter()
        .map(|d| agent.scrape().value("sonde_block_io_latency_seconds_sum", &[("disk", d.as_str()), ("op", "write")]))
        .sum();
    if latency <= 0.0 {
        return Err(format!("no write latency recorded for {:?}", target.disks).into());
    }
    matrix("block_io", hook);
    Ok(())
}

fn check_hook(agent: &Agent, probe: &str, hook: &str) -> Result<(), Failed> {
    let up = agent.scrape().value("sonde_probe_up", &[("probe", probe), ("hook", hook)]);
    if up == 1.0 {
        Ok(())
    } else {
        Err(format!("sonde_probe_up{{probe={probe},hook={hook}}} is {up}, want 1").into())
    }
}

fn block_io_direct_writes(in_kernel: bool) -> Result<(), Failed> {
    let agent = Agent::start(&format!("probes:\n  block_io:\n    aggregate: {in_kernel}\n"), &[]);
    block_io_counts(&agent, "tp_btf")
}

fn block_io_tracepoint() -> Result<(), Failed> {
    let agent = Agent::start("probes:\n  block_io:\n    hook: tracepoint\n", &[]);
    block_io_counts(&agent, "tracepoint")
}

/// The hook `hook: auto` picks for page_faults on this kernel.
fn page_fault_hook() -> &'static str {
    if kernel::expects_fentry() {
        "fentry"
    } else if kernel::has_kprobes() {
        "kprobe"
    } else {
        "tracepoint"
    }
}

/// Faults of `comm` of `kind`, or of every kind.
fn faults(metrics: &Metrics, comm: &str, kind: Option<&str>) -> f64 {
    metrics
        .series("sonde_page_faults_total")
        .iter()
        .filter(|(labels, _)| labels.iter().any(|(k, v)| k == "comm" && v == comm))
        .filter(|(labels, _)| kind.is_none_or(|want| labels.iter().any(|(k, v)| k == "kind" && v == want)))
        .map(|(_, v)| v)
        .sum()
}

/// Maps `pages` fresh anonymous pages (no huge pages, which would take one
/// fault for many) and writes one byte to each: one fault per page.
fn touch_anonymous_pages(pages: usize) {
    let len = pages * PAGE;
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(at, libc::MAP_FAILED, "mmap");
    // SAFETY: advice on our own mapping.
    assert_eq!(unsafe { libc::madvise(at, len, libc::MADV_NOHUGEPAGE) }, 0, "madvise(MADV_NOHUGEPAGE)");
    let base = at.cast::<u8>();
    for page in 0..pages {
        // SAFETY: inside the mapping.
        unsafe { base.add(page * PAGE).write_volatile(1) };
    }
    // SAFETY: unmaps what we mapped.
    assert_eq!(unsafe { libc::munmap(at, len) }, 0, "munmap");
}

/// A uniquely named thread touching N fresh anonymous pages: at least N
/// faults for its name (at least: its stack and the allocator fault too).
/// They are minor where the hook tells the kinds apart.
fn page_faults_counted(hook: Option<&'static str>) -> Result<(), Failed> {
    const N: usize = 300;
    let comm = workload::unique_comm("pgf");
    let setting = hook.map(|h| format!("    hook: {h}\n")).unwrap_or_default();
    let agent = Agent::start(&format!("probes:\n  page_faults:\n    labels: [comm, kind]\n{setting}"), &[]);
    let used = hook.unwrap_or_else(page_fault_hook);
    check_hook(&agent, "page_faults", used)?;
    workload::on_named_thread(&comm, || touch_anonymous_pages(N));
    let kind = if used == "tracepoint" { "unknown" } else { "minor" };
    let counted = agent.settle(N as f64, |m| faults(m, &comm, Some(kind)));
    at_least(&format!("sonde_page_faults_total{{comm={comm},kind={kind}}}"), counted, N as f64)?;
    matrix("page_faults", used);
    Ok(())
}

fn page_faults_anonymous() -> Result<(), Failed> {
    page_faults_counted(None)
}

fn page_faults_kprobe() -> Result<(), Failed> {
    page_faults_counted(Some("kprobe"))
}

/// Writes N pages to a block-backed file, drops them from the page cache,
/// maps the file and reads one byte per page with read-ahead off: each page
/// must come from the disk, a major fault. At least N: the retried fault
/// that waited for the read counts as major too, as the kernel counts it.
fn page_faults_major() -> Result<(), Failed> {
    const N: usize = 64;
    let comm = workload::unique_comm("pgm");
    let agent = Agent::start("probes:\n  page_faults:\n    labels: [comm, kind]\n", &[]);
    check_hook(&agent, "page_faults", page_fault_hook())?;
    let target = BlockTarget::find("pgm")?;
    let file = target.open(0)?;
    let data = Aligned::pages(N, 0x33);
    std::os::unix::fs::FileExt::write_all_at(&file, data.bytes(), 0).map_err(|e| format!("write: {e}"))?;
    file.sync_all().map_err(|e| format!("fsync: {e}"))?;
    let fd = file.as_raw_fd();
    let len = N * PAGE;
    // SAFETY: advice on our own descriptor.
    let dropped = unsafe { libc::posix_fadvise(fd, 0, len as i64, libc::POSIX_FADV_DONTNEED) };
    if dropped != 0 {
        return Err(format!("posix_fadvise(DONTNEED): error {dropped}").into());
    }
    let missing = workload::on_named_thread(&comm, move || read_mapped_pages(fd, len));
    drop(file);
    if missing != 0 {
        return Err(format!("{missing} pages were still cached after POSIX_FADV_DONTNEED").into());
    }
    let major = agent.settle(N as f64, |m| faults(m, &comm, Some("major")));
    at_least(&format!("sonde_page_faults_total{{comm={comm},kind=major}}"), major, N as f64)?;
    Ok(())
}

/// Maps `len` bytes of `fd`, checks (mincore) that none is cached, reads a
/// byte of each page without read-ahead, and returns the pages that were
/// cached before the reads.
fn read_mapped_pages(fd: i32, len: usize) -> usize {
    // SAFETY: a shared read-only mapping of our file, unmapped below.
    let at = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
    assert_ne!(at, libc::MAP_FAILED, "mmap");
    // SAFETY: advice on our own mapping: read only the page faulted on.
    assert_eq!(unsafe { libc::madvise(at, len, libc::MADV_RANDOM) }, 0, "madvise(MADV_RANDOM)");
    let mut cached = vec![0u8; len / PAGE];
    // SAFETY: one byte per page of the mapping.
    assert_eq!(unsafe { libc::mincore(at, len, cached.as_mut_ptr()) }, 0, "mincore");
    let base = at.cast::<u8>();
    let mut sum = 0u64;
    for page in 0..len / PAGE {
        // SAFETY: inside the mapping.
        sum += u64::from(unsafe { base.add(page * PAGE).read_volatile() });
    }
    std::hint::black_box(sum);
    // SAFETY: unmaps what we mapped.
    assert_eq!(unsafe { libc::munmap(at, len) }, 0, "munmap");
    cached.iter().filter(|c| *c & 1 == 1).count()
}
