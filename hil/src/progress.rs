//! Progress lines on stderr while a lab comes up and goes down
//! (`[  1.23s] node-a: ovs-vswitchd up`), each stamped with the time since
//! the run started.
//!
//! What does not live here: logs (`tracing`, shown with `-v`) and the
//! report (printed on stdout by [`crate::run`]).

use std::fmt::Display;
use std::io::Write;
use std::time::{Duration, Instant};

/// Where progress lines go.
#[derive(Debug, Clone)]
pub struct Progress {
    start: Instant,
    quiet: bool,
}

impl Progress {
    /// Progress lines counted from now; `quiet` prints nothing.
    pub fn new(quiet: bool) -> Progress {
        Progress {
            start: Instant::now(),
            quiet,
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Prints one line.
    pub fn say(&self, msg: impl Display) {
        if !self.quiet {
            // A closed stderr is no reason to stop a run (eprintln! would panic).
            let _ = writeln!(
                std::io::stderr(),
                "{}",
                stamp(self.elapsed(), &msg.to_string())
            );
        }
    }
}

/// One progress line: `[  1.23s] msg`.
pub fn stamp(elapsed: Duration, msg: &str) -> String {
    format!("[{:>7.2}s] {msg}", elapsed.as_secs_f64())
}

/// A duration for humans: `0.42s`, `12.3s`.
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2}s")
    } else {
        format!("{s:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped() {
        assert_eq!(
            stamp(Duration::from_millis(1234), "node-a: up"),
            "[   1.23s] node-a: up"
        );
        assert_eq!(secs(Duration::from_millis(420)), "0.42s");
        assert_eq!(secs(Duration::from_millis(12_340)), "12.3s");
    }
}
