//! Small runs (50 members, 1 % loss, 60 s) that debug builds finish in seconds.

use std::sync::OnceLock;
use std::time::Duration;

use super::*;

fn small(seed: u64) -> SimConfig {
    SimConfig::new(50, 0.01, seed, Duration::from_secs(60))
}

/// The run most tests read; computed once.
fn report() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| run(&small(1), |_| {}).expect("valid settings"))
}

#[test]
fn same_seed_same_result() {
    let again = run(&small(1), |_| {}).expect("valid settings");
    assert_eq!(&again, report());
    let other = run(&small(2), |_| {}).expect("valid settings");
    assert_ne!(
        other.datagrams,
        report().datagrams,
        "the seed should matter"
    );
}

#[test]
fn join_reaches_every_member_quickly() {
    let join = report()
        .join_p999_s
        .expect("the join reached 99.9 % of members");
    assert!(join > 0.0 && join < 5.0, "join took {join} s");
}

#[test]
fn crash_is_detected() {
    let detect = report().detect_p999_s.expect("the crash was detected");
    // At least the suspicion timeout, at most a generous bound.
    let suspicion = small(1).membership.suspect_to_down_after.as_secs_f64();
    assert!(
        detect > suspicion && detect < 60.0,
        "detection took {detect} s"
    );
}

#[test]
fn no_false_downs_without_failures() {
    assert_eq!(report().false_downs, 0, "{:?}", report());
}

#[test]
fn bytes_per_member_are_bounded() {
    let bytes = report().bytes_per_member_per_s;
    assert!(
        bytes > 0.0 && bytes < 20_000.0,
        "{bytes} bytes per member per second"
    );
}

#[test]
fn bad_settings_are_refused() {
    let mut config = small(1);
    config.loss = 1.0;
    assert!(matches!(run(&config, |_| {}), Err(SimError::Invalid(_))));
    let mut config = small(1);
    config.nodes = 1;
    assert!(matches!(run(&config, |_| {}), Err(SimError::Invalid(_))));
}

#[test]
fn json_line_has_the_five_fields() {
    let json = report().to_json();
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "nodes",
        "join_p999_s",
        "detect_p999_s",
        "bytes_per_member_per_s",
        "false_downs",
    ] {
        assert!(keys.contains(&key), "{key} missing from {json}");
    }
    assert_eq!(keys.len(), 5, "{json}");
}
