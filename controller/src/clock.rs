//! The wall-clock boundary: where the controller reads the time of day.
//!
//! Every wall-clock timestamp the controller writes (a Lease's
//! `renewTime` and `acquireTime`, an IPPool condition's
//! `lastTransitionTime`, an Event's `eventTime`) comes from a
//! [`WallClock`] injected through the loops' settings
//! ([`crate::leader::ElectionConfig::clock`],
//! [`crate::usage::UsageConfig::clock`]). Production uses
//! [`SystemClock`]; the simulator injects a clock that follows its
//! simulated time, so a run is reproducible bit for bit.
//!
//! Durations and deadlines are not wall-clock time: they use
//! `tokio::time::Instant`, which the simulator's paused runtime drives.
//! The admission webhook's certificate times stay on `SystemTime` (the
//! simulator does not run the webhook).

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

/// A source of the time of day.
pub trait WallClock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The real time of day.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock shared by the loops of a process.
pub type SharedClock = Arc<dyn WallClock>;

/// The [`SystemClock`], shared.
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_follows_the_real_time() {
        let before = Timestamp::now();
        let now = system_clock().now();
        let after = Timestamp::now();
        assert!(before <= now && now <= after);
    }
}
