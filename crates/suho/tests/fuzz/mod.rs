//! The HTTP API fuzzed from its own OpenAPI document with schemathesis (PyPI, pinned in
//! `ensure-schemathesis.sh`, installed into `target/schemathesis-venv/` on first use): every
//! operation, every check, a fixed seed, once with a user's token (logout left out, so the
//! token lives through the run) and once without. Together at least 10,000 generated cases,
//! and not one failure of any check: no 5xx, no answer the document does not describe, no
//! request the document allows refused, and none it forbids accepted.
//!
//! `schemathesis.toml` says why `/ws` may answer 426; `hooks.py` holds the one rule between
//! two fields that JSON Schema cannot state (the stops of a BUY or a SELL).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Running;

/// The seed of both runs: the same cases every time.
const SEED: &str = "20261203";
/// Cases per operation, with the token and without (about 7,500 and 4,500 cases in all).
const WITH_TOKEN: &str = "300";
const WITHOUT_TOKEN: &str = "150";
/// The fewest generated cases the two runs may make together.
const AT_LEAST: u64 = 10_000;

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    )
}

/// The `schemathesis` command, installed first if it is missing.
fn schemathesis() -> PathBuf {
    let venv = target_dir().join("schemathesis-venv");
    let out = std::process::Command::new("sh")
        .arg(here().join("ensure-schemathesis.sh"))
        .arg(&venv)
        .output()
        .expect("running tests/fuzz/ensure-schemathesis.sh");
    assert!(
        out.status.success(),
        "installing schemathesis failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs schemathesis against `base` with `extra` arguments; its report and the number of
/// cases it generated. Fails the test on any failure it reports.
async fn run(bin: &Path, base: &str, what: &str, extra: &[&str]) -> u64 {
    let work = target_dir().join("schemathesis-work");
    std::fs::create_dir_all(&work).expect("a working directory");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--config-file")
        .arg(here().join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{base}/api/openapi.json"))
        .args(["--checks", "all", "--seed", SEED])
        .args(["--generation-database", "none", "--no-color"])
        .args(extra)
        .env("SCHEMATHESIS_HOOKS", here().join("hooks.py"))
        .current_dir(&work)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis {what} finishes within 10 minutes"))
        .expect("running schemathesis");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "schemathesis {what} found failures ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // "Test cases:\n  7512 generated, 7512 passed, 7 skipped"
    let generated = report
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("schemathesis {what}: no case count in its report:\n{report}"));
    eprintln!("schemathesis {what}: {generated} cases, no failure");
    generated
}

#[tokio::test]
async fn the_api_holds_to_its_document_under_schemathesis() {
    let bin = tokio::task::spawn_blocking(schemathesis)
        .await
        .expect("no panic");
    let p = Running::start().await;
    let (_, token) = p.user("fuzz@example.com").await;
    let base = p.url("");
    let bearer = format!("Authorization: Bearer {token}");
    let with_token = run(
        &bin,
        &base,
        "with a token",
        &[
            "-H",
            &bearer,
            "--exclude-path",
            "/api/auth/logout",
            "-n",
            WITH_TOKEN,
        ],
    )
    .await;
    let without = run(&bin, &base, "without a token", &["-n", WITHOUT_TOKEN]).await;
    assert!(
        with_token + without >= AT_LEAST,
        "only {} cases generated",
        with_token + without
    );
    p.stop().await;
}
