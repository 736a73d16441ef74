//! The npm fixture of the Pusher tests (tests/pusher: pusher-js for tests/pusher.rs, the
//! `pusher` server SDK for tests/pusher_http.rs), installed with `npm ci` from its
//! package-lock.json when a package is missing.
// Only the Pusher tests use this, and every test file declares `mod common;`.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Mutex;

/// Where the fixture's package.json is.
pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pusher");

/// The fixture, installed (once per process) if any of its packages is missing.
pub fn npm_fixture() -> &'static Path {
    static READY: Mutex<bool> = Mutex::new(false);
    let dir = Path::new(FIXTURE);
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    let missing = ["pusher", "pusher-js"]
        .iter()
        .any(|package| !dir.join("node_modules").join(package).exists());
    if !*ready && missing {
        eprintln!("pusher tests: installing the npm fixture (npm ci in {FIXTURE})");
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "`npm ci` in {FIXTURE} failed ({status:?}); the Pusher tests need Node.js 20+ and npm"
        );
    }
    *ready = true;
    dir
}
