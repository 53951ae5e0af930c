//! The store's one retry policy: which errors are worth another try
//! ([`StoreError::is_retryable`], [`StoreError::is_final`]), a doubling
//! [`Backoff`], and [`retry`], which repeats a store call until it succeeds
//! or fails with a final error.

use std::future::Future;
use std::time::Duration;

use crate::store::StoreError;

/// Doubling delay between retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `first` and doubles up to `max` (`max` below `first` is
    /// raised to `first`, so the delay never shrinks).
    pub fn new(first: Duration, max: Duration) -> Self {
        let max = max.max(first);
        Backoff {
            first,
            max,
            current: first,
        }
    }

    /// 0.5 s doubling to 30 s: the store's default policy.
    pub fn standard() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// The delay to wait now; the next call returns twice as much, capped.
    #[allow(clippy::should_implement_trait)] // never ends, so not an Iterator
    pub fn next(&mut self) -> Duration {
        let d = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        d
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

/// The one classification of store errors the policy acts on; every
/// store maps its own failures into these variants (the etcd store's
/// `Failure::error` is tested against it).
impl StoreError {
    /// True for errors where trying the same call again later may succeed
    /// (transport trouble), false for answers (taken, gone, bad data).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Etcd { .. }
                | StoreError::Unreachable { .. }
                | StoreError::Timeout { .. }
                | StoreError::WatchCanceled { .. }
                | StoreError::TooManyConflicts { .. }
        )
    }

    /// No retry of any store call can fix this: Alloc, BadConfig, TlsFile, Auth, Options.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            StoreError::Alloc(_)
                | StoreError::BadConfig { .. }
                | StoreError::TlsFile { .. }
                | StoreError::Auth { .. }
                | StoreError::Options(_)
        )
    }
}

/// Calls `f` until it succeeds or fails with an error that `is_final`;
/// before each retry calls `on_retry(&error, delay)` and sleeps `delay` from `backoff`.
pub async fn retry<T, F, Fut>(
    mut backoff: Backoff,
    mut on_retry: impl FnMut(&StoreError, Duration),
    mut f: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_final() => return Err(e),
            Err(e) => {
                let delay = backoff.next();
                on_retry(&e, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::alloc::AllocError;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn net(s: &str) -> ipnet::Ipv4Net {
        s.parse().expect("test subnet")
    }

    fn unreachable() -> StoreError {
        StoreError::Unreachable {
            op: "get".into(),
            endpoints: "http://127.0.0.1:2379".into(),
            reason: "connection refused".into(),
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(ms(100), ms(700));
        let got: Vec<Duration> = (0..6).map(|_| b.next()).collect();
        assert_eq!(got, [ms(100), ms(200), ms(400), ms(700), ms(700), ms(700)]);
        b.reset();
        assert_eq!(b.next(), ms(100));
    }

    #[test]
    fn standard_is_half_a_second_to_thirty() {
        let mut b = Backoff::standard();
        assert_eq!(b.next(), ms(500));
        assert_eq!(b.next(), ms(1000));
        let last = (0..20).map(|_| b.next()).last();
        assert_eq!(last, Some(Duration::from_secs(30)));
    }

    #[test]
    fn backoff_never_shrinks_or_overflows() {
        let mut b = Backoff::new(ms(50), ms(10));
        assert_eq!((b.next(), b.next()), (ms(50), ms(50)));
        let mut huge = Backoff::new(Duration::from_secs(u64::MAX / 2 + 1), Duration::MAX);
        huge.next();
        assert_eq!(huge.next(), Duration::MAX);
        assert_eq!(huge.next(), Duration::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_sleeps_the_backoff_between_attempts_until_success() {
        let start = tokio::time::Instant::now();
        let mut attempts = 0;
        let mut seen = Vec::new();
        let v = retry(
            Backoff::new(ms(100), ms(250)),
            |e, d| seen.push((e.is_retryable(), d)),
            || {
                attempts += 1;
                let n = attempts;
                async move {
                    if n < 4 {
                        Err(unreachable())
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 4);
        assert_eq!(seen, [(true, ms(100)), (true, ms(200)), (true, ms(250))]);
        assert_eq!(start.elapsed(), ms(550));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_returns_a_final_error_at_once() {
        let start = tokio::time::Instant::now();
        let mut attempts = 0;
        let mut retries = 0;
        let e = retry(
            Backoff::standard(),
            |_, _| retries += 1,
            || {
                attempts += 1;
                async { Err::<(), _>(StoreError::Options("no etcd endpoints".into())) }
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(e, StoreError::Options(_)), "{e}");
        assert_eq!((attempts, retries), (1, 0));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_retries_answers_that_are_not_final() {
        // A missing config may be written later; an allocation failure will
        // not fix itself.
        let mut results = vec![
            Err(StoreError::Alloc(AllocError::Exhausted {
                network: net("10.244.0.0/16"),
                min: net("10.244.1.0/24"),
                max: net("10.244.1.0/24"),
                count: 1,
            })),
            Err(StoreError::NoConfig {
                key: "/twill/network/config".into(),
            }),
        ];
        let mut seen = Vec::new();
        let e = retry(
            Backoff::standard(),
            |e, _| seen.push(e.to_string()),
            || {
                let r: Result<(), StoreError> = results.pop().unwrap_or(Ok(()));
                async move { r }
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(e, StoreError::Alloc(_)), "{e}");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].contains("/twill/network/config"), "{seen:?}");
    }

    #[test]
    fn final_errors_are_never_retryable() {
        let net = net("10.244.0.0/16");
        let io = || std::io::Error::other("test");
        let cases = [
            (StoreError::Options("x".into()), true),
            (
                StoreError::Auth {
                    op: "get".into(),
                    user: "twill".into(),
                    reason: "bad password".into(),
                },
                true,
            ),
            (
                StoreError::TlsFile {
                    path: "/ca.pem".into(),
                    source: io(),
                },
                true,
            ),
            (
                StoreError::Alloc(AllocError::Exhausted {
                    network: net,
                    min: net,
                    max: net,
                    count: 0,
                }),
                true,
            ),
            (
                StoreError::Unreachable {
                    op: "get".into(),
                    endpoints: "e".into(),
                    reason: "refused".into(),
                },
                false,
            ),
            (StoreError::NoConfig { key: "k".into() }, false),
            (StoreError::LeaseGone(net), false),
            (StoreError::TooManyConflicts { tries: 3 }, false),
        ];
        for (e, is_final) in cases {
            assert_eq!(e.is_final(), is_final, "{e}");
            assert!(!(e.is_final() && e.is_retryable()), "{e}");
        }
    }
}
