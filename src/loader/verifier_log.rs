//! libbpf reports through one process-wide print callback. This routes it
//! to `tracing` and, while a load is in progress, keeps what it says so a
//! verifier rejection can be reported with its log.

use std::sync::Mutex;

use libbpf_rs::PrintLevel;

static CAPTURE: Mutex<Option<String>> = Mutex::new(None);

/// Installs the callback; call once at start-up.
pub fn install() {
    libbpf_rs::set_print(Some((PrintLevel::Debug, on_print)));
}

fn on_print(level: PrintLevel, message: String) {
    if let Ok(mut capture) = CAPTURE.lock() {
        if let Some(buf) = capture.as_mut() {
            buf.push_str(&message);
        }
    }
    let message = message.trim_end();
    match level {
        PrintLevel::Warn => tracing::debug!(target: "libbpf", "{message}"),
        PrintLevel::Info | PrintLevel::Debug => tracing::trace!(target: "libbpf", "{message}"),
    }
}

/// Runs `f`, returning its error together with what libbpf printed meanwhile.
pub fn capture<T>(f: impl FnOnce() -> Result<T, libbpf_rs::Error>) -> Result<T, (libbpf_rs::Error, String)> {
    if let Ok(mut c) = CAPTURE.lock() {
        *c = Some(String::new());
    }
    let result = f();
    let log = CAPTURE.lock().ok().and_then(|mut c| c.take()).unwrap_or_default();
    result.map_err(|e| (e, log))
}

/// The verifier's own lines, when libbpf printed them.
pub fn verifier_section(log: &str) -> Option<String> {
    const BEGIN: &str = "-- BEGIN PROG LOAD LOG --";
    const END: &str = "-- END PROG LOAD LOG --";
    match (log.find(BEGIN), log.rfind(END)) {
        (Some(b), Some(e)) if b < e => Some(log[b + BEGIN.len()..e].trim().to_string()),
        _ => None,
    }
}

/// libbpf's most specific complaint: its first line that names a failure.
pub fn reason(log: &str) -> Option<&str> {
    log.lines()
        .map(|l| l.trim().trim_start_matches("libbpf: "))
        .filter(|l| !l.contains("skipping optional step"))
        .find(|l| l.contains("failed") || l.contains("error"))
}

/// The first `head` and last `tail` lines, with a count of what is left out.
pub fn head_and_tail(log: &str, head: usize, tail: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    if lines.len() <= head + tail {
        return lines.join("\n");
    }
    let skipped = lines.len() - head - tail;
    let mut out = lines[..head].join("\n");
    out.push_str(&format!("\n... ({skipped} lines omitted; --log-level debug shows all) ...\n"));
    out.push_str(&lines[lines.len() - tail..].join("\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_tail_keeps_ends() {
        let log: String = (1..=10).map(|i| format!("line{i}\n")).collect();
        let short = head_and_tail(&log, 2, 3);
        assert!(short.starts_with("line1\nline2\n... (5 lines omitted"));
        assert!(short.ends_with("line8\nline9\nline10"));
        assert_eq!(head_and_tail("a\nb", 2, 3), "a\nb");
    }

    #[test]
    fn verifier_section_is_cut_out() {
        let log = "libbpf: prog 'x': BPF program load failed\n-- BEGIN PROG LOAD LOG --\n0: R1=ctx\ninvalid mem access\n-- END PROG LOAD LOG --\nmore";
        assert_eq!(verifier_section(log).as_deref(), Some("0: R1=ctx\ninvalid mem access"));
        assert_eq!(verifier_section("libbpf: no log"), None);
    }

    #[test]
    fn reason_is_the_first_failure_line() {
        let log = "libbpf: loaded kernel BTF\nlibbpf: prog 'p': failed to create kretprobe 'vfs_read+0x0' perf event: -ENOENT\nlibbpf: later failed";
        assert_eq!(reason(log), Some("prog 'p': failed to create kretprobe 'vfs_read+0x0' perf event: -ENOENT"));
    }
}
