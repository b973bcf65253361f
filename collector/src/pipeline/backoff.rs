//! The pause between send attempts: exponential backoff with full jitter.

use std::time::Duration;

use super::RetryConfig;

/// The pause before retry number `failures` (1-based): full jitter over an
/// exponentially growing bound (`initial_backoff * 2^(failures-1)`, at most
/// `max_backoff`); a backend's `Retry-After` is honoured up to `max_backoff`.
pub fn backoff(retry: &RetryConfig, failures: u32, retry_after: Option<Duration>) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let bound = retry
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(retry.max_backoff);
    let jittered = bound.mul_f64(fastrand::f64());
    match retry_after {
        Some(hint) => hint.min(retry.max_backoff).max(jittered),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_full_jitter_and_honours_retry_after() {
        let retry = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        };
        for failures in 1..40 {
            let bound = Duration::from_millis(100)
                .saturating_mul(1 << (failures - 1).min(30))
                .min(Duration::from_secs(2));
            for _ in 0..50 {
                assert!(backoff(&retry, failures, None) <= bound);
            }
        }
        // Full jitter: not always the bound.
        let samples: Vec<_> = (0..50).map(|_| backoff(&retry, 5, None)).collect();
        assert!(samples.iter().any(|d| *d < Duration::from_millis(1500)));
        assert!(backoff(&retry, 1, Some(Duration::from_secs(1))) >= Duration::from_secs(1));
        assert_eq!(
            backoff(&retry, 1, Some(Duration::from_secs(3600))),
            Duration::from_secs(2)
        );
    }
}
