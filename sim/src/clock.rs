//! Simulated time. The run's tokio runtime has its clock paused: time moves
//! only when every task waits, straight to the next timer. [`SimClock`]
//! turns that monotonic time into the wall-clock time the API server and
//! the controller write into objects: a fixed epoch plus the simulated time
//! elapsed since the run started, so timestamps are the same in every run
//! of a seed.

use std::time::Duration;

use tokio::time::Instant;

/// The wall-clock time at which every run starts: 2026-01-01T00:00:00Z.
pub const EPOCH_UNIX: i64 = 1_767_225_600;

/// The run's clock.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    start: Instant,
}

impl SimClock {
    /// A clock whose zero is now (call it inside the run's runtime).
    pub fn start() -> SimClock {
        SimClock {
            start: Instant::now(),
        }
    }

    /// Simulated time since the run started.
    pub fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    /// Nanoseconds since the Unix epoch, in simulated wall-clock time.
    pub fn unix_nanos(&self) -> i128 {
        i128::from(EPOCH_UNIX) * 1_000_000_000 + self.elapsed().as_nanos() as i128
    }
}

impl spur_kubeapi::Clock for SimClock {
    fn now_unix(&self) -> i64 {
        EPOCH_UNIX + self.elapsed().as_secs() as i64
    }
}

impl spur_controller::clock::WallClock for SimClock {
    fn now(&self) -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::from_nanosecond(self.unix_nanos())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spur_kubeapi::Clock;

    #[tokio::test(start_paused = true)]
    async fn wall_time_follows_simulated_time() {
        let c = SimClock::start();
        assert_eq!(c.now_unix(), EPOCH_UNIX);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(c.elapsed(), Duration::from_millis(2_500));
        assert_eq!(c.now_unix(), EPOCH_UNIX + 2);
        assert_eq!(
            c.unix_nanos(),
            i128::from(EPOCH_UNIX) * 1_000_000_000 + 2_500_000_000
        );
    }
}
