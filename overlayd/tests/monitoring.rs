//! The monitoring docs against the metrics `overlayd` serves: every YAML block of the
//! README's "Monitoring" section and of `docs/monitoring.md` passes `promtool` (Prometheus's
//! own checker: `check config`, which checks the rule files it names too, and `check
//! rules`); every metric they name is one the daemon serves; the table of metrics in
//! `docs/monitoring.md` lists every metric, and only those. Without promtool the YAML checks
//! are skipped with a line saying so (`scripts/setup` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use overlayd::metrics::{PeerSample, PolicySample, Snapshot, encode};
use protocol::drops::DropReason;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bodies of the ```yaml blocks of `markdown`.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let (mut blocks, mut current): (Vec<String>, Option<String>) = (Vec::new(), None);
    for line in markdown.lines() {
        match (&mut current, line.trim_start().starts_with("```")) {
            (None, true) if line.trim() == "```yaml" => current = Some(String::new()),
            (Some(_), true) => blocks.extend(current.take()),
            (Some(block), false) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Everything the daemon can serve, every optional part present.
fn everything() -> String {
    encode(Snapshot {
        peers: vec![PeerSample {
            name: "h2".into(),
            public_key: "k2=".into(),
            received_bytes: 1,
            sent_bytes: 2,
            latest_handshake_unix: Some(1.0),
            handshakes_initiated: 1,
            handshakes_completed: 1,
            handshakes_failed: 0,
        }],
        drops: [(DropReason::SourceNotAllowed, 1)].into_iter().collect(),
        members: [("alive", 2)].into_iter().collect(),
        certificate_expiry_unix: Some(2),
        docker_endpoints: Some(1),
        policy: Some(PolicySample {
            version: 1,
            allowed_by_rule: [(1, 1)].into_iter().collect(),
            denied: 1,
            tracked_flows: 1,
        }),
        ..Snapshot::default()
    })
}

/// The metric names `text` declares (`# TYPE NAME KIND`), counters with their `_total`.
fn served() -> Vec<String> {
    everything()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The `overlay_...` names in `text`.
fn named(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("overlay_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_the_docs_name_is_served_and_the_table_lists_them_all() {
    let served = served();
    let readme = read("README.md");
    let section = readme
        .split("## Monitoring")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has a Monitoring section");
    let doc = read("docs/monitoring.md");
    for (source, text) in [("README.md", section), ("docs/monitoring.md", doc.as_str())] {
        for name in named(text) {
            assert!(
                served.contains(&name),
                "{source} names {name}, which overlayd does not serve; it serves {served:?}"
            );
        }
    }
    // The table: one row per metric, `| `NAME` | type | ...`.
    let rows: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `overlay_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let mut listed: Vec<String> = rows.iter().map(|r| format!("overlay_{r}")).collect();
    let mut all = served.clone();
    listed.sort();
    all.sort();
    assert_eq!(
        listed, all,
        "docs/monitoring.md's table against what is served"
    );
}

/// Runs `promtool ARGS` in `dir`; `None` when promtool is not installed.
fn promtool(dir: &Path, args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), said))
}

#[test]
fn the_docs_scrape_configs_and_alert_rules_pass_promtool() {
    let mut checked = 0;
    for source in ["README.md", "docs/monitoring.md"] {
        let blocks = yaml_blocks(&read(source));
        let rules: Vec<&String> = blocks.iter().filter(|b| b.starts_with("groups:")).collect();
        let configs: Vec<&String> = blocks
            .iter()
            .filter(|b| b.contains("scrape_configs:"))
            .collect();
        assert!(
            rules.len() == 1 && !configs.is_empty(),
            "{source}: not one block of alert rules and a scrape config in its ```yaml blocks"
        );
        assert_eq!(
            rules.len() + configs.len(),
            blocks.len(),
            "{source}: a yaml block of another kind"
        );
        let rules = rules[0];
        let dir = tempfile::tempdir().expect("temp dir");
        // The config of docs/monitoring.md names the rules file; the README's names none.
        std::fs::write(dir.path().join("overlay.rules.yml"), rules).expect("write rules");
        let Some((ok, said)) = promtool(dir.path(), &["check", "rules", "overlay.rules.yml"])
        else {
            eprintln!("skipped: promtool is not installed (scripts/setup installs it)");
            return;
        };
        assert!(ok, "{source}: promtool check rules:\n{said}\n{}", rules);
        for config in configs {
            std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
            let (ok, said) =
                promtool(dir.path(), &["check", "config", "prometheus.yml"]).expect("promtool");
            assert!(ok, "{source}: promtool check config:\n{said}\n{config}");
            checked += 1;
        }
        checked += 1;
        eprintln!("{source}: promtool accepts its scrape config and alert rules");
    }
    assert_eq!(checked, 4);
}
