//! Records the git commit the binary is built from, for `sessionhub --version`.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        // A source tree without git history (a crate tarball, a container build context).
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SESSIONHUB_COMMIT={commit}");
    // A new commit or checkout moves HEAD or the branch it names.
    for path in [
        "../../.git/HEAD",
        "../../.git/refs/heads",
        "../../.git/packed-refs",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
