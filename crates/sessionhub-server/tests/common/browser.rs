//! Headless Chromium for the browser tests (tests/browser.rs, tests/demo_page.rs,
//! tests/echo.rs): a Node.js driver script in tests/browser (run.mjs, demo.mjs, echo.mjs;
//! their shared loop is driver.mjs) that
//! answers JSON-line commands on stdin/stdout.
//!
//! Prerequisites: Node.js 20+, Debian's `chromium` at /usr/bin/chromium, and `npm ci` in
//! tests/browser (playwright-core, which never downloads a browser, and the browser builds
//! of pusher-js and laravel-echo). `scripts/test.sh`
//! installs them; [`Browser::launch`] runs `npm ci` itself if node_modules is missing and
//! fails with instructions if Chromium is.
// Only the browser tests use this, and every test file declares `mod common;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Where the pages, the drivers and the npm project live.
pub const BROWSER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
const CHROMIUM: &str = "/usr/bin/chromium";
/// The longest one browser step (a page load, a wait for the page) may take.
pub const STEP: Duration = Duration::from_secs(20);

/// A driver script in tests/browser and how its test names itself.
pub struct Driver {
    /// The script, e.g. `run.mjs`.
    pub script: &'static str,
    /// The test's name in messages, e.g. "browser test".
    pub test: &'static str,
    /// How long the driver may take to start Chromium.
    pub launch_within: Duration,
}

/// Checks (once per process) what the browser tests need; installs the npm side if missing.
fn prerequisites(test: &str) -> &'static Path {
    static READY: Mutex<bool> = Mutex::new(false);
    let dir = Path::new(BROWSER_DIR);
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if *ready {
        return dir;
    }
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the {test} needs Node.js 20+ (`node` on PATH): {node:?}"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "the {test} needs Chromium at {CHROMIUM}: run scripts/test.sh, or \
         `sudo apt-get install -y chromium` (Debian/Ubuntu)"
    );
    // Every package of package.json: a checkout installed before one was added has to
    // install again.
    let installed = ["playwright-core", "pusher-js", "laravel-echo"]
        .iter()
        .all(|package| dir.join("node_modules").join(package).exists());
    if !installed {
        eprintln!(
            "{test}: installing playwright-core, pusher-js and laravel-echo (npm ci in {BROWSER_DIR})"
        );
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .current_dir(dir)
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "`npm ci` in {BROWSER_DIR} failed ({status:?}); run scripts/test.sh or install \
             npm and retry"
        );
    }
    *ready = true;
    dir
}

/// `target/<dir>/`, emptied: for screenshots and the driver's log.
pub fn artifacts(dir: impl AsRef<Path>) -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory");
    let dir = target.join(dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the artifacts directory");
    dir
}

/// `node <script> <artifacts>`, driving Chromium over JSON lines on stdin/stdout.
pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    log: PathBuf,
    artifacts: PathBuf,
}

impl Browser {
    /// Starts `driver` and has it launch Chromium; its log goes to `<artifacts>/driver.log`.
    pub async fn launch(driver: &Driver, artifacts: &Path) -> Self {
        let dir = prerequisites(driver.test);
        let log = artifacts.join("driver.log");
        let stderr = std::fs::File::create(&log).expect("creating the driver log");
        let mut child = Command::new("node")
            .arg(dir.join(driver.script))
            .arg(artifacts)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut browser = Self {
            child,
            stdin,
            stdout,
            next_id: 0,
            log,
            artifacts: artifacts.to_owned(),
        };
        let launched = browser
            .call("launch", json!({}), driver.launch_within)
            .await;
        eprintln!("{}: Chromium {}", driver.test, launched["version"]);
        browser
    }

    /// Runs one driver command; its own waits are bounded by `within`, and so is this.
    pub async fn call(&mut self, op: &str, args: Value, within: Duration) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = args;
        command["id"] = json!(id);
        command["op"] = json!(op);
        command["timeoutMs"] = json!(within.as_millis() as u64);
        let mut line = command.to_string();
        line.push('\n');
        let stdin = self.stdin.as_mut().expect("driver running");
        if let Err(e) = stdin.write_all(line.as_bytes()).await {
            self.fail(&format!("{op}: the driver is gone ({e})"));
        }
        // The driver times out first (and says what it waited for); this is the backstop.
        let next = tokio::time::timeout(within + Duration::from_secs(10), self.stdout.next_line());
        let reply = match next.await {
            Ok(Ok(Some(reply))) => reply,
            Ok(_) => self.fail(&format!("{op}: the driver exited")),
            Err(_) => self.fail(&format!("{op}: no answer within {within:?}")),
        };
        let reply: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply}: {e}"));
        assert_eq!(reply["id"], json!(id), "replies come in order");
        if let Some(error) = reply.get("error") {
            self.fail(&format!("{op} {command} failed: {error}"));
        }
        reply["ok"].clone()
    }

    fn fail(&self, what: &str) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{what}\nartifacts (screenshots, driver log): {}\n--- driver log tail ---\n{}",
            self.artifacts.display(),
            tail.join("\n")
        );
    }

    /// Closes Chromium and waits for the driver to exit.
    pub async fn close(mut self) {
        self.call("close", json!({}), STEP).await;
        drop(self.stdin.take());
        let exited = tokio::time::timeout(STEP, self.child.wait()).await;
        assert!(
            matches!(exited, Ok(Ok(status)) if status.success()),
            "driver exit: {exited:?}"
        );
    }
}

impl Drop for Browser {
    /// On a failed test: EOF on stdin makes the driver close Chromium and exit; it is
    /// killed if it has not after a few seconds.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.start_kill();
    }
}
