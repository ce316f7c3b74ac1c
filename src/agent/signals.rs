//! Signals as messages. SIGTERM, SIGINT and SIGHUP are blocked in every
//! thread from the first moment of the process (threads inherit the mask),
//! and one thread takes them synchronously with sigwait: a SIGTERM that
//! arrives while probes are still loading waits for the lifecycle to take
//! it, instead of killing the process with programs half attached.

use std::sync::mpsc::Sender;

use nix::sys::signal::{SigSet, Signal};

use super::Control;

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(signal);
    }
    set
}

/// Blocks the handled signals in the calling thread (and the threads it
/// starts from now on). Called before `main`, so that no window is left.
pub fn block() {
    // A failure leaves the default actions in place, as before.
    let _ = handled().thread_block();
}

/// Restores the default actions for commands that do not serve (`check`,
/// `probes`): Ctrl-C ends them at once.
pub fn unblock() {
    let _ = handled().thread_unblock();
}

/// Starts the thread that turns signals into `Control` messages.
pub fn forward(control: Sender<Control>) -> std::io::Result<()> {
    std::thread::Builder::new().name("sonde-signals".into()).spawn(move || loop {
        let message = match handled().wait() {
            Ok(Signal::SIGHUP) => Control::Reload { reply: None },
            Ok(Signal::SIGINT) => Control::Terminate("SIGINT"),
            Ok(_) => Control::Terminate("SIGTERM"),
            Err(err) => {
                tracing::error!(error = %err, "waiting for signals failed");
                return;
            }
        };
        if control.send(message).is_err() {
            return;
        }
    })?;
    Ok(())
}
