//! The same seed gives the same run, bit for bit: two runs of a seed in one
//! process (whose hash maps get different random keys each time) record
//! the same trace; different seeds record different ones; and the report
//! and the fault plan follow the seed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::PathBuf;

use spur_sim::faults::Profile;
use spur_sim::trace::first_difference;
use spur_sim::world::{run, RunOptions};
use spur_testbed::Testbed;

fn testbed(name: &str) -> Testbed {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testbeds")
        .join(name);
    Testbed::load(&dir).unwrap()
}

#[test]
fn a_seed_reproduces_its_run_bit_for_bit() {
    for (name, faults) in [
        ("seed-example", Profile::Default),
        ("seed-antrea-multus", Profile::Chaos),
        ("multicast", Profile::Default),
    ] {
        let t = testbed(name);
        let opts = RunOptions {
            seed: 5,
            faults,
            keep_trace: true,
            ..RunOptions::default()
        };
        let a = run(&t, &opts).unwrap();
        let b = run(&t, &opts).unwrap();
        let (ta, tb) = (a.trace.clone().unwrap(), b.trace.clone().unwrap());
        assert!(ta.len() > 100, "{name}: a real run records events");
        assert_eq!(
            first_difference(&ta, &tb),
            None,
            "{name}: two runs of seed 5 differ"
        );
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.plan, b.plan);
        assert_eq!(a.report, b.report);
        let c = run(
            &t,
            &RunOptions {
                seed: 6,
                ..opts.clone()
            },
        )
        .unwrap();
        assert_ne!(
            a.fingerprint, c.fingerprint,
            "{name}: seeds 5 and 6 ran alike"
        );
    }
}
