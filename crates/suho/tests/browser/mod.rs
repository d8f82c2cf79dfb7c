//! The web dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `web/tests/ensure-chromium.sh` if missing) driven by `web/tests/browser.mjs` through
//! playwright-core, against the whole platform serving the built dashboard. Register, log in,
//! prices moving, a rejected and a filled order, the position and its live profit, a dropped
//! stream that resumes (a fill made while it was down arrives), the closes and the balance,
//! a second user who never sees the first one's trades and gets a risk alert banner of their
//! own, and a third one's pending orders (a buy limit that rests, is moved to the market and
//! fills; a GTD sell limit cancelled), a partial close leaving the remainder and trailing
//! stops that follow the synthetic feed's prices. First the dashboard is type-checked
//! (`npm run check`) and its types (`web/src/api.gen.ts`) are checked to be what
//! `npm run gen:api` makes of this server's `/api/openapi.json`. Screenshots go to `target/browser-artifacts/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use suho_testkit::TestEnv;

use super::Running;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// `npm run check` in `web/`: the dashboard type-checks (the build does not: Vite only strips
/// the types) and its generated API types are those of its saved OpenAPI document.
fn type_check(root: &Path) {
    let out = std::process::Command::new("npm")
        .args(["run", "check"])
        .current_dir(root.join("web"))
        .output()
        .expect("running npm run check in web/");
    assert!(
        out.status.success(),
        "npm run check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The browser's path, installing Debian's `chromium` first if it is missing.
fn chromium(root: &Path) -> String {
    let out = std::process::Command::new("sh")
        .arg(root.join("web/tests/ensure-chromium.sh"))
        .output()
        .expect("running web/tests/ensure-chromium.sh");
    assert!(
        out.status.success(),
        "installing chromium failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn the_dashboard_trades_in_headless_chromium() {
    let root = repo_root();
    let dist = root.join("web/dist");
    let (built, browser) = tokio::task::spawn_blocking({
        let dist = dist.clone();
        let root = root.clone();
        move || {
            let built = suho::web::ensure_built(&dist).expect("the dashboard builds (npm)");
            type_check(&root);
            (built, chromium(&root))
        }
    })
    .await
    .expect("no panic");
    eprintln!("dashboard: {built:?}; browser: {browser}");
    let artifacts = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("browser-artifacts");

    let mut env = TestEnv::new().await;
    env.config.http.web_dir = dist;
    let p = Running::with(env).await;

    // The gateway serves the build, with its assets, and the API beside it.
    let index = p.http.get(p.url("/")).send().await.expect("GET /");
    assert_eq!(index.status(), 200);
    let html = index.text().await.unwrap();
    let asset = html
        .split('"')
        .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
        .expect("index.html names its script");
    let js = p
        .http
        .get(p.url(asset))
        .send()
        .await
        .expect("GET the script");
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let missing = p.http.get(p.url("/api/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let run = tokio::process::Command::new("node")
        .arg(root.join("web/tests/browser.mjs"))
        .arg(p.url(""))
        .arg(&artifacts)
        .env("SUHO_CHROMIUM", &browser)
        .current_dir(&root)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(360), run)
        .await
        .expect("the browser tests finish within 360 s")
        .expect("running node web/tests/browser.mjs");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the browser tests failed ({}); screenshots in {}:\n{report}",
        out.status,
        artifacts.display()
    );
    eprintln!("{report}");
    p.stop().await;
}
