//! Byte-rate limits on what a sender puts on the wire: one per pairing and one for the node, each
//! a token bucket (governor) that can be changed while streams run.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A byte rate that can be changed at any time, or no limit.
///
/// The bucket holds a tenth of a second of the rate, so a batch waits for its bytes in pieces of
/// at most that much: the long-run rate is exact, bursts are short, and a new rate takes effect
/// within a tenth of a second even in the middle of a large batch.
#[derive(Default)]
pub struct Limiter {
    current: Mutex<Option<Bucket>>,
}

#[derive(Clone)]
struct Bucket {
    rate: u64,
    burst: NonZeroU32,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl Limiter {
    /// A limiter at `bytes_per_sec`, or unlimited.
    pub fn new(bytes_per_sec: Option<u64>) -> Limiter {
        let l = Limiter::default();
        l.set_rate(bytes_per_sec);
        l
    }

    /// Changes the rate; `None` or 0 lifts the limit. Waits already under way finish their
    /// current piece at the old rate.
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        let next = bytes_per_sec.filter(|&r| r > 0).map(|rate| {
            let per_sec = clamp_u32(rate);
            let burst = clamp_u32(rate / 10);
            let quota = Quota::per_second(per_sec).allow_burst(burst);
            Bucket {
                rate,
                burst,
                limiter: Arc::new(RateLimiter::direct(quota)),
            }
        });
        *self.lock() = next;
    }

    /// The rate in bytes per second, if limited.
    pub fn rate(&self) -> Option<u64> {
        self.lock().as_ref().map(|b| b.rate)
    }

    /// Waits until `bytes` may go.
    pub async fn take(&self, mut bytes: u64) {
        while bytes > 0 {
            let Some(bucket) = self.lock().clone() else {
                return;
            };
            let piece = bytes.min(u64::from(bucket.burst.get()));
            // A piece never exceeds the bucket, so this cannot fail.
            let _ = bucket.limiter.until_n_ready(clamp_u32(piece)).await;
            bytes -= piece;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Bucket>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn clamp_u32(v: u64) -> NonZeroU32 {
    NonZeroU32::new(u32::try_from(v).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

/// The limits one pairing's bytes pass through: its own, then the node's.
#[derive(Clone)]
pub struct Throttle {
    /// This pairing's rate.
    pub pairing: Arc<Limiter>,
    /// The node-wide cap shared by every pairing.
    pub node: Arc<Limiter>,
}

impl Throttle {
    /// Waits until `bytes` may go under both limits; returns how long that took.
    pub async fn wait(&self, bytes: u64) -> Duration {
        let start = Instant::now();
        self.pairing.take(bytes).await;
        self.node.take(bytes).await;
        start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_can_be_set_changed_and_lifted() {
        let l = Limiter::new(None);
        assert_eq!(l.rate(), None);
        l.set_rate(Some(4 << 20));
        assert_eq!(l.rate(), Some(4 << 20));
        l.set_rate(Some(0));
        assert_eq!(l.rate(), None, "0 means no limit");
    }

    #[test]
    fn the_bucket_holds_a_tenth_of_a_second() {
        let l = Limiter::new(Some(1_000_000));
        let bucket = l.lock().clone().expect("limited");
        assert_eq!(bucket.burst.get(), 100_000);
        assert!(
            bucket.limiter.check_n(clamp_u32(100_001)).is_err(),
            "more than the burst is refused"
        );
    }

    #[tokio::test]
    async fn the_node_cap_limits_a_pairing_that_has_no_limit_of_its_own() {
        let t = Throttle {
            pairing: Arc::new(Limiter::new(None)),
            node: Arc::new(Limiter::new(Some(1_000_000))),
        };
        // The bucket lets 100 kB through at once; the other 200 kB take at least 0.2 s at
        // 1 MB/s. Only the lower bound is asserted: a loaded machine may take longer.
        let waited = t.wait(300_000).await;
        assert!(
            waited >= Duration::from_millis(190),
            "waited only {waited:?}"
        );
    }

    #[tokio::test]
    async fn an_unlimited_take_does_not_wait() {
        let t = Throttle {
            pairing: Arc::new(Limiter::new(None)),
            node: Arc::new(Limiter::new(None)),
        };
        assert!(t.wait(u64::MAX).await < Duration::from_secs(1));
    }
}
