//! Running the `petri` binary as a user does, for the CLI tests.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `petri` with `args` and returns what it did.
pub fn petri(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_petri"))
        .args(args)
        .output()
        .expect("run petri")
}

/// What it printed on stdout.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What it printed on stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A file in a fresh temporary directory of this test binary and `test`.
pub fn temp(name: &str, test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "petri-{}-{}-{test}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}
