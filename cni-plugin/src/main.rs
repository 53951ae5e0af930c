//! `twill`: the CNI plugin binary. Reads stdin and the environment, runs the
//! verb, prints the result or the CNI error object on stdout.
//!
//! The container runtime starts this binary once per call, so start-up is
//! part of every ADD: `main` is the C entry point, which skips the Rust
//! runtime's set-up (the main thread's stack guard lookup through
//! `/proc/self/maps` and the stack-overflow signal handlers), none of which a
//! short single-threaded call needs.

#![no_main]

use std::io::{Read, Write};
use std::os::raw::{c_char, c_int};

use twill_cni::{Error, Outcome};

#[no_mangle]
pub extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    // As the Rust runtime would: a closed stdout is a write error, not a
    // signal that kills the call.
    // SAFETY: installs the ignore disposition, no handler code runs.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    // Diagnostics go to stderr, which runtimes keep in their logs; stdout
    // carries only the CNI result.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => twill_cni::run(|k| std::env::var(k).ok(), &stdin),
        Err(e) => Outcome {
            cni_version: twill_cni::config::DEFAULT_VERSION.to_string(),
            result: Err(Error::Decode {
                reason: format!("reading stdin: {e}"),
            }),
        },
    };
    let (text, code) = match outcome.result {
        Ok(Some(v)) => (Some(v.to_string()), 0),
        Ok(None) => (None, 0),
        Err(e) => (Some(e.to_json(&outcome.cni_version).to_string()), 1),
    };
    if let Some(text) = text {
        let mut out = std::io::stdout().lock();
        // Nothing sensible is left to do if stdout is gone.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
    code
}
