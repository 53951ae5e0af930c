//! `twill`: the CNI plugin binary. Reads stdin and the environment, runs the
//! verb, prints the result or the CNI error object on stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

use twill_cni::{Error, Outcome};

fn main() -> ExitCode {
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
        Ok(Some(v)) => (Some(v.to_string()), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => (
            Some(e.to_json(&outcome.cni_version).to_string()),
            ExitCode::FAILURE,
        ),
    };
    if let Some(text) = text {
        let mut out = std::io::stdout().lock();
        // Nothing sensible is left to do if stdout is gone.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
    code
}
