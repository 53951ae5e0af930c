//! Polling with a deadline: the only way the harness waits, so that a
//! condition that never comes true ends in an error naming what was awaited.

use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};

/// Default deadline for convergence waits (lease, routes, subnet file).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

const POLL: Duration = Duration::from_millis(200);

/// Calls `probe` until it returns `Ok(Some(_))` or `timeout` passes.
///
/// `Ok(None)` and `Err(_)` both mean "not yet"; the last error or the text
/// from `describe_none` ends up in the timeout error, with `detail`
/// (typically a log tail) computed only when the wait failed.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
    detail: impl FnOnce() -> String,
) -> Result<T> {
    let start = Instant::now();
    loop {
        let last = match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::from("condition not met"),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= timeout {
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                waited: timeout,
                last,
                detail: detail(),
            });
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_value_once_probe_succeeds() {
        let mut n = 0;
        let v = wait_for(
            "counter",
            Duration::from_secs(5),
            || {
                n += 1;
                Ok((n >= 3).then_some(n))
            },
            String::new,
        )
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn timeout_names_what_was_awaited_and_last_error() {
        let err = wait_for::<()>(
            "the impossible",
            Duration::from_millis(1),
            || {
                Err(HarnessError::Parse {
                    what: "x".into(),
                    reason: "boom".into(),
                })
            },
            || "\nDETAIL".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("the impossible"), "{err}");
        assert!(err.contains("boom"), "{err}");
        assert!(err.contains("DETAIL"), "{err}");
    }
}
