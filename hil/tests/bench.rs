//! `spur-hil bench-cni` (the real binary, a few cycles): it exits 0,
//! prints every case's ADD and DEL figures, ends with the exact summary
//! line, and leaves nothing of its lab behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::process::Command;

#[test]
fn a_short_bench_prints_the_summary_line_and_leaves_nothing() {
    if !common::root_or_skip("a_short_bench_prints_the_summary_line_and_leaves_nothing") {
        return;
    }
    let _one = common::lab_lock();
    let bins = common::workspace_bins();
    let agent_log = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(common::spur_hil())
        .args(["bench-cni", "--cycles", "3", "--warmup", "1", "--bin-dir"])
        .arg(&bins)
        .arg("--agent-log")
        .arg(agent_log.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}{stdout}", out.status);

    // Every case, both verbs, 3 samples each; the agent's share of the
    // spur cases.
    for case in ["vlan", "macvlan", "ipam"] {
        for verb in ["ADD", "DEL"] {
            assert!(
                stdout.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() == 7 && f[0] == case && f[1] == verb && f[2] == "3"
                }),
                "no {case} {verb} row:\n{stdout}"
            );
        }
    }
    assert!(stdout.contains("vlan (agent)     ADD      3"), "{stdout}");
    assert!(stdout.contains("ipam (agent)     ADD      3"), "{stdout}");

    // The last line, exactly: five keys in order, each with 2 decimals.
    let last = stdout.lines().last().unwrap();
    let fields: Vec<&str> = last.split(' ').collect();
    assert_eq!(fields[0], "cni-bench", "{last}");
    let keys: Vec<&str> = fields[1..]
        .iter()
        .map(|f| f.split_once('=').unwrap().0)
        .collect();
    assert_eq!(
        keys,
        [
            "vlan_add_p50_ratio",
            "vlan_add_p99_ratio",
            "ipam_add_p50_ratio",
            "vlan_add_p50_ms",
            "macvlan_add_p50_ms"
        ],
        "{last}"
    );
    for f in &fields[1..] {
        let v = f.split_once('=').unwrap().1;
        let (int, dec) = v.split_once('.').unwrap();
        assert!(
            int.bytes().all(|b| b.is_ascii_digit()) && !int.is_empty(),
            "{last}"
        );
        assert_eq!(dec.len(), 2, "{last}");
        assert!(v.parse::<f64>().unwrap() > 0.0, "{last}");
    }

    // The agent's log was kept and holds the requests the table counted.
    let log = std::fs::read_to_string(agent_log.path()).unwrap();
    assert!(log.contains("CNI request served command=ADD"), "{log}");

    // Nothing of the lab is left.
    let lab = stderr
        .lines()
        .find_map(|l| l.split_once("] lab ")?.1.split(':').next())
        .expect("the lab's id in the progress lines");
    assert!(lab.starts_with("sph"), "{lab}");
    assert_eq!(common::netns_with_prefix(lab), Vec::<String>::new());
    assert_eq!(common::links_with_prefix(lab), Vec::<String>::new());
    assert!(!std::path::Path::new("/run/spur-hil").join(lab).exists());
    assert_eq!(common::processes_mentioning(lab), Vec::<String>::new());
}
