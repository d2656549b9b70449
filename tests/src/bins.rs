//! Finding the workspace's binaries from a test, and showing what a command printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary `name` of package `package` next to `beside` (a `CARGO_BIN_EXE_*` path of the
/// test's own package), built first when it is missing: cargo builds only the test's package.
///
/// # Panics
/// When the build fails.
#[must_use]
pub fn sibling_binary(beside: &str, name: &str, package: &str) -> PathBuf {
    let bin = Path::new(beside).with_file_name(name);
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", package])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "building {package}");
    }
    bin
}

/// The workspace's debug binary `name` (in `CARGO_TARGET_DIR`, else `target/`).
///
/// # Panics
/// When it has not been built.
#[must_use]
pub fn workspace_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let path = target.join("debug").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p cairn-master -p cairn-agent -p cairn-cli` first",
        path.display()
    );
    path
}

/// A command's exit status, stdout and stderr, for assertion messages.
#[must_use]
pub fn show_output(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
