//! The web dashboard's build: `suho up` (and the browser tests) run npm in `web/` when the
//! build the gateway serves (`http.web_dir`, `web/dist`) is missing or older than its
//! sources. Idempotent: with an up-to-date build it runs nothing.
//!
//! `npm ci` runs when `node_modules` is missing or older than `package-lock.json`; `npm run
//! build` when `dist/index.html` is missing or older than any source (`index.html`,
//! `package.json`, `package-lock.json`, `vite.config.ts`, `tsconfig.json`, `src/`,
//! `public/`). Only the npm registry is contacted, and only by `npm ci`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::Context;

/// What [`ensure_built`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebBuild {
    /// `dist`'s parent holds no `package.json`: a prebuilt directory, served as it is.
    NotASource,
    /// The build was up to date.
    UpToDate,
    /// npm built it (after `npm ci` when `installed`).
    Built {
        /// Whether `npm ci` ran first.
        installed: bool,
    },
}

/// Builds the dashboard into `dist` with npm if it is missing or stale (see the module docs).
///
/// # Errors
/// npm is not installed, or `npm ci` or `npm run build` fails (with the end of its output).
pub fn ensure_built(dist: &Path) -> anyhow::Result<WebBuild> {
    let Some(src) = dist.parent().filter(|p| p.join("package.json").is_file()) else {
        return Ok(WebBuild::NotASource);
    };
    let src = if src.as_os_str().is_empty() {
        Path::new(".")
    } else {
        src
    };
    let lock = src.join("package-lock.json");
    let installed_marker = src.join("node_modules").join(".package-lock.json");
    let install = match (modified(&installed_marker), modified(&lock)) {
        (None, _) => true,
        (Some(installed), Some(locked)) => locked > installed,
        (Some(_), None) => false,
    };
    let built = modified(&dist.join("index.html"));
    let stale = match built {
        None => true,
        Some(built) => newest_source(src) > Some(built),
    };
    if !install && !stale {
        return Ok(WebBuild::UpToDate);
    }
    if install {
        let ci = if lock.is_file() { "ci" } else { "install" };
        tracing::info!(dir = %src.display(), "installing the dashboard's npm packages (npm {ci})");
        npm(src, &[ci, "--no-audit", "--no-fund"])?;
    }
    tracing::info!(dir = %src.display(), "building the dashboard (npm run build)");
    npm(src, &["run", "build"])?;
    anyhow::ensure!(
        dist.join("index.html").is_file(),
        "npm run build in {} made no {}",
        src.display(),
        dist.join("index.html").display()
    );
    Ok(WebBuild::Built { installed: install })
}

fn npm(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| {
            format!(
                "running `npm {}` in {} (the dashboard needs Node.js and npm: `apt-get install nodejs npm`)",
                args.join(" "),
                dir.display()
            )
        })?;
    if !out.status.success() {
        let tail = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        anyhow::bail!(
            "`npm {}` in {} failed ({}):\n{}\n{}",
            args.join(" "),
            dir.display(),
            out.status,
            tail(&out.stdout),
            tail(&out.stderr)
        );
    }
    Ok(())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of the dashboard's sources.
fn newest_source(src: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for f in [
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.ts",
        "tsconfig.json",
    ] {
        newest = newest.max(modified(&src.join(f)));
    }
    let mut dirs: Vec<PathBuf> = vec![src.join("src"), src.join("public")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                newest = newest.max(modified(&path));
            }
        }
    }
    newest
}
