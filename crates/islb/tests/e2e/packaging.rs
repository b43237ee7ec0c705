//! What an operator installs besides the binary: shell completions, the manual page, the
//! systemd unit, the example configuration, the alert rules and the dashboard.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use islb_testkit::workspace_root;

use crate::harness::{ISLB, run_islb};

fn deploy(path: &str) -> PathBuf {
    workspace_root().join("deploy").join(path)
}

fn stdout(args: &[&str]) -> String {
    let out = run_islb(args, &[]);
    assert!(out.status.success(), "islb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A tool from PATH (or `target/tools`, where scripts/test puts what Debian ships only
/// inside a bigger package), or none.
fn tool(name: &str) -> Option<PathBuf> {
    let local = workspace_root().join("target/tools").join(name);
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

#[test]
fn completions_for_bash_zsh_and_fish_and_a_manual_page() {
    let bash = stdout(&["completions", "bash"]);
    for word in ["_islb()", "complete -F _islb", "drain", "undrain", "--nats-creds", "--jwt-jwks"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let check = Command::new("bash").args(["-n", "-c", &bash]).output().expect("bash");
    assert!(check.status.success(), "the bash script does not parse: {}", String::from_utf8_lossy(&check.stderr));
    assert!(stdout(&["completions", "zsh"]).starts_with("#compdef islb"));
    assert!(stdout(&["completions", "fish"]).contains("complete -c islb"));
    let out = run_islb(&["completions", "tcsh"], &[]);
    assert_eq!(out.status.code(), Some(64), "an unknown shell is a usage error");

    let man = stdout(&["man"]);
    assert!(man.starts_with(".ie") && man.contains(".TH islb 1"), "{}", &man[..200.min(man.len())]);
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS", "islb\\-drain"] {
        assert!(man.contains(section), "the manual page lacks {section}");
    }
}

#[test]
fn the_example_configuration_is_valid_and_mentions_every_option() {
    let file = deploy("islb.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let checked = stdout(&["config", "check", "--config", file.to_str().unwrap()]);
    assert!(checked.contains("log-format = json\n"), "{checked}");
    // Every file key of the reference, set or shown commented out with its default.
    let reference = stdout(&["config", "reference"]);
    let keys: Vec<&str> = reference
        .lines()
        .skip(2)
        .filter_map(|l| l.split('|').nth(3))
        .filter_map(|cell| cell.trim().strip_prefix('`')?.split('`').next())
        .collect();
    assert!(keys.len() > 40, "{keys:?}");
    let missing: Vec<&&str> = keys
        .iter()
        .filter(|k| !text.lines().any(|l| l.trim_start_matches(['#', ' ']).starts_with(&format!("{k} ="))))
        .collect();
    assert!(missing.is_empty(), "deploy/islb.toml does not mention {missing:?}");
}

/// The value of `key=` in the unit's `[Service]` lines (the last one).
fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines().filter(|l| !l.starts_with('#')).rev().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).next()
}

#[test]
fn the_systemd_unit_is_hardened_verifies_and_outlasts_the_shutdown_grace() {
    let unit = std::fs::read_to_string(deploy("islb.service")).unwrap();
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("RestartPreventExitStatus", "64"),
    ] {
        assert_eq!(unit_value(&unit, key), Some(value), "{key}");
    }
    // systemd's SIGKILL comes after islb's own grace (islb answers, deregisters, flushes).
    let grace = unit_value(&unit, "Environment").and_then(|e| e.strip_prefix("ISLB_SHUTDOWN_GRACE=")).unwrap();
    let grace = humantime::parse_duration(grace).unwrap();
    let stop = humantime::parse_duration(unit_value(&unit, "TimeoutStopSec").unwrap()).unwrap();
    assert!(stop > grace, "TimeoutStopSec {stop:?} must exceed the shutdown grace {grace:?}");
    // What ExecStart runs parses (the example configuration at its installed path).
    let exec = unit_value(&unit, "ExecStart").unwrap();
    assert_eq!(exec, "/usr/local/bin/islb serve --config /etc/islb/islb.toml");

    let Some(analyze) = tool("systemd-analyze") else {
        eprintln!("SKIPPED: systemd-analyze is not installed here (Debian's systemd package has it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("islb.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/islb", ISLB)).unwrap();
    let out = Command::new(analyze).args(["verify", "--man=no"]).arg(&copy).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
}

/// The `islb_*` names the code emits (`metrics::counter!("islb_...")` and the like).
fn exported_metrics() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    for krate in std::fs::read_dir(workspace_root().join("crates")).unwrap().flatten() {
        let src = krate.path().join("src");
        if src.is_dir() {
            walk(&src, &mut files);
        }
    }
    let mut names = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for macro_ in ["counter!(", "gauge!(", "histogram!("] {
            for part in text.split(macro_).skip(1) {
                let name = part.trim_start().strip_prefix('"').and_then(|p| p.split('"').next());
                if let Some(name) = name.filter(|n| n.starts_with("islb_")) {
                    let kind = macro_.trim_end_matches("!(");
                    names.insert(name.to_owned());
                    if kind == "histogram" {
                        for suffix in ["_bucket", "_sum", "_count"] {
                            names.insert(format!("{name}{suffix}"));
                        }
                    }
                }
            }
        }
    }
    names
}

/// Every `islb_*` name in `text`.
fn queried(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("islb_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        // `islb_` inside a longer word (a file name, a label value) is not a query.
        let before = rest[..i].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_and_the_alerts_query_only_metrics_islb_exports() {
    let exported = exported_metrics();
    for name in ["islb_ready", "islb_requests_total", "islb_expiry_lateness_seconds_bucket", "islb_placements_total"] {
        assert!(exported.contains(name), "the source scan missed {name}: {exported:?}");
    }
    let operations = std::fs::read_to_string(workspace_root().join("docs/OPERATIONS.md")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/islb.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 16, "{exprs:?}");
    let rules = std::fs::read_to_string(deploy("prometheus/islb-rules.yml")).unwrap();
    let rule_exprs: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")).collect();
    assert!(rule_exprs.len() >= 5);
    for (what, text) in [("the dashboard", exprs.join("\n")), ("the alert rules", rule_exprs.join("\n"))] {
        let names = queried(&text);
        assert!(!names.is_empty(), "{what} queries nothing");
        for name in names {
            assert!(exported.contains(&name), "{what} queries {name}, which islb does not export");
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
            assert!(operations.contains(&format!("`{base}")), "{name} is not in docs/OPERATIONS.md's metrics table");
        }
    }
    // The alerts the rules must cover.
    for alert in ["IslbNotReady", "IslbStoreUnhealthy", "IslbBadRequestRate", "IslbExpiryLate", "IslbNoCapacity"] {
        assert!(rules.contains(&format!("alert: {alert}")), "no {alert}");
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = tool("promtool") else {
        eprintln!(
            "SKIPPED: promtool is not installed here (Debian's prometheus package has it; scripts/test extracts it)"
        );
        return;
    };
    for args in [&["check", "rules", "islb-rules.yml"][..], &["test", "rules", "islb-rules.test.yml"]] {
        let out = Command::new(&promtool).args(args).current_dir(deploy("prometheus")).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

/// Nothing in the repository reaches outside it: no path into a sibling directory (a
/// clone stands alone).
#[test]
fn no_file_of_the_repository_refers_outside_it() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name();
            if p.is_dir() {
                if !matches!(name.to_str(), Some("target" | ".git" | "corpus" | "artifacts")) {
                    walk(&p, out);
                }
            } else {
                out.push(p);
            }
        }
    }
    let root = workspace_root();
    let mut files = Vec::new();
    walk(&root, &mut files);
    assert!(files.len() > 100, "{} files", files.len());
    let outside = ["../", "shared/"].concat();
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains(&outside)))
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(offenders.is_empty(), "these files refer to {outside}: {offenders:?}");
}
