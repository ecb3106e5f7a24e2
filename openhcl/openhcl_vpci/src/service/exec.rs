//! The new image: the arguments it runs with, the check that it is an `openhcl-vpci` before
//! anything stops, and the `exec` itself (which keeps the shutdown signals blocked, so one
//! that arrives during the handover stays pending for the successor).

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The arguments the successor runs with: this image's own, told to resume from its
/// standard input.
pub(super) fn successor_args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != RESUME_FLAG)
        .collect();
    args.push(RESUME_FLAG.into());
    args
}

/// The flag of `openhcl-vpci serve` that makes it resume from a handover on its standard
/// input instead of connecting and listening.
pub const RESUME_FLAG: &str = "--resume-from-stdin";

/// A failpoint for the tests: the exec fails as an exec can (the binary replaced or removed
/// since it was checked, out of memory), and the old image must run on.
pub(super) fn injected_exec_failure() -> Option<std::io::Error> {
    fail::fail_point!("update-exec", |_| Some(std::io::Error::other(
        "failpoint update-exec"
    )));
    None
}

/// How long the new binary may take to say its version.
const PREFLIGHT: Duration = Duration::from_secs(10);

/// Checks the new binary before anything stops: an executable file that runs and says it is
/// an `openhcl-vpci` (`--version`). An exec that fails after the buses stopped is survived
/// (the old image resumes), but an exec that *succeeds* into the wrong program (a script, a
/// different binary: `execvp` even runs an unknown format with `/bin/sh`) would take the
/// buses with it, so that is what this refuses. Returns the version line.
pub(super) fn check_binary(binary: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(binary)
        .map_err(|e| format!("cannot use {} as the new binary: {e}", binary.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file", binary.display()));
    }
    let mut child = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let deadline = Instant::now() + PREFLIGHT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not say its version within {PREFLIGHT:?}",
                    binary.display()
                ));
            }
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.by_ref().take(4096).read_to_string(&mut out);
    }
    let line = out.lines().next().unwrap_or_default().trim().to_owned();
    if !status.success() || !line.starts_with("openhcl-vpci ") {
        return Err(format!(
            "{} is not an openhcl-vpci binary (--version said {line:?}, {status})",
            binary.display()
        ));
    }
    Ok(line)
}

/// Execs `binary` with the successor's arguments and `handover` as its standard input,
/// keeping this thread's signal mask: SIGTERM and SIGINT stay blocked, so one that arrives
/// now stays pending for the successor's watcher. (`std::process::Command` clears the mask
/// before it execs, which would let a pending signal be taken, and lost, by this image.)
/// Returns only if the exec failed, with standard input as it was.
pub(super) fn exec_keeping_signals_blocked(
    binary: &std::path::Path,
    handover: &UnixStream,
) -> std::io::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstring = |s: &std::ffi::OsStr| {
        CString::new(s.as_bytes())
            .map_err(|_| std::io::Error::other("an argument holds a NUL byte"))
    };
    let result = (|| -> std::io::Result<std::io::Error> {
        let path = cstring(binary.as_os_str())?;
        let mut argv = vec![path.clone()];
        for arg in successor_args() {
            argv.push(cstring(&arg)?);
        }
        let stdin = rustix::io::dup(std::io::stdin())?;
        rustix::stdio::dup2_stdin(handover)?;
        let error = match nix::unistd::execv(&path, &argv) {
            Err(errno) => std::io::Error::from(errno),
            Ok(never) => match never {},
        };
        rustix::stdio::dup2_stdin(&stdin)?;
        Ok(error)
    })();
    result.unwrap_or_else(|e| e)
}
