//! Retrying with capped, jittered backoff ([`Backoff`]) until the work succeeds, fails for
//! good, or shutdown comes: the one retry loop the services share.

use std::future::Future;
use std::time::Duration;

use sightline_shared::Backoff;
use tokio_util::sync::CancellationToken;

/// Waits `delay`, or less if `cancel` fires: true if the whole delay passed.
pub async fn sleep_unless_cancelled(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = cancel.cancelled() => false,
    }
}

/// Waits the backoff's next delay (drawn with fresh jitter), or less if `cancel` fires:
/// true if the whole delay passed.
pub async fn pause(backoff: &mut Backoff, cancel: &CancellationToken) -> bool {
    sleep_unless_cancelled(backoff.next_delay(rand::random()), cancel).await
}

/// Runs `op` until it succeeds, retrying with `backoff` while its errors are transient
/// (each retry logged at WARN with `what` and the delay): `Ok(Some)` on success, `Ok(None)`
/// if `cancel` fired first (also while `op` runs), `Err` for an error retrying cannot fix.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    cancel: &CancellationToken,
    mut backoff: Backoff,
    is_transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    loop {
        let attempt = tokio::select! {
            result = op() => result,
            () = cancel.cancelled() => return Ok(None),
        };
        match attempt {
            Ok(value) => return Ok(Some(value)),
            Err(error) if !is_transient(&error) => return Err(error),
            Err(error) => {
                let delay = backoff.next_delay(rand::random());
                tracing::warn!(error = %format!("{error:#}"), retry_in_ms = delay.as_millis() as u64, "failed to {what}, retrying");
                if !sleep_unless_cancelled(delay, cancel).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// The backoff of start-up and recovery steps: from 200 ms up to 10 s.
pub fn start_up_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(2))
    }

    #[tokio::test]
    async fn retries_transient_errors_until_success() {
        let calls = AtomicU32::new(0);
        let result: Result<Option<u32>, String> = retry(
            "count",
            &CancellationToken::new(),
            quick(),
            |_| true,
            || {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n < 3 {
                        Err(format!("try {n}"))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(result, Ok(Some(3)));
    }

    #[tokio::test]
    async fn stops_at_a_permanent_error_and_at_cancellation() {
        let result: Result<Option<()>, String> = retry(
            "fail",
            &CancellationToken::new(),
            quick(),
            |e: &String| e != "permanent",
            || async { Err("permanent".to_owned()) },
        )
        .await;
        assert_eq!(result, Err("permanent".to_owned()));

        let cancel = CancellationToken::new();
        cancel.cancel();
        let result: Result<Option<()>, String> = retry(
            "wait",
            &cancel,
            quick(),
            |_| true,
            || async { Err("transient".to_owned()) },
        )
        .await;
        assert_eq!(result, Ok(None));
        assert!(!sleep_unless_cancelled(Duration::from_secs(60), &cancel).await);
    }
}
