//! `manta start` without `--block`: the node runs in a new session, and this
//! process relays its readiness report. The token reaches the node through a
//! pipe, never its command line or environment.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use super::{DAEMON_CHILD_ENV, ERROR_PREFIX, READY_MARKER};

/// The command line without `--token VALUE`, `--token=VALUE` or `--token-file PATH`
/// (the token goes to the node process through a pipe instead).
fn without_token(arguments: Vec<OsString>) -> Vec<OsString> {
    let mut kept = Vec::with_capacity(arguments.len());
    let mut skip_value = false;
    for argument in arguments {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let text = argument.to_string_lossy();
        if text == "--token" || text == "--token-file" {
            skip_value = true;
        } else if !(text.starts_with("--token=") || text.starts_with("--token-file=")) {
            kept.push(argument);
        }
    }
    kept
}

/// Re-executes `manta start ... --block` in a new session and relays its readiness
/// report. A token goes to the new process through its standard input, never in
/// its command line or environment.
pub(super) fn daemonize(connect_timeout: Duration, token: Option<&str>) -> ExitCode {
    let executable = match std::env::current_exe() {
        Ok(path) => path,
        Err(error) => {
            eprintln!("error: cannot find the manta executable to start the node: {error}");
            return ExitCode::from(1);
        }
    };
    let arguments = without_token(std::env::args_os().skip(1).collect());
    let mut command = Command::new(executable);
    command
        .args(arguments)
        .arg("--block")
        .env(DAEMON_CHILD_ENV, "1")
        .env_remove("MANTA_TOKEN")
        .stdin(if token.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if token.is_some() {
        command.arg("--token-stdin");
    }
    // SAFETY: only the setsid syscall runs between fork and exec; it allocates nothing.
    unsafe {
        command.pre_exec(|| rustix::process::setsid().map(drop).map_err(std::io::Error::from));
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            eprintln!("error: could not start the node process: {error}");
            return ExitCode::from(1);
        }
    };
    if let (Some(token), Some(mut stdin)) = (token, child.stdin.take())
        && let Err(error) = writeln!(stdin, "{token}")
    {
        eprintln!("error: could not hand the token to the node process: {error}");
        let _ = child.kill();
        return ExitCode::from(1);
    }
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + connect_timeout + Duration::from_secs(30);
    let mut report = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(remaining) {
            Ok(line) if line == READY_MARKER => {
                print!("{}", report.iter().map(|line: &String| format!("{line}\n")).collect::<String>());
                return ExitCode::SUCCESS;
            }
            Ok(line) if line.starts_with(ERROR_PREFIX) => {
                let rest = line[ERROR_PREFIX.len()..].trim();
                let (code, message) = rest.split_once(' ').unwrap_or(("1", rest));
                eprintln!("error: {message}");
                let _ = child.wait();
                return ExitCode::from(code.parse::<u8>().unwrap_or(1));
            }
            Ok(line) => report.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().ok().and_then(|status| status.code()).unwrap_or(1);
                eprintln!("error: the node process exited (status {status}) before it was ready");
                for line in report {
                    eprintln!("{line}");
                }
                return ExitCode::from(u8::try_from(status).unwrap_or(1).max(1));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                let waited = connect_timeout + Duration::from_secs(30);
                eprintln!("error: the node did not become ready within {}s; it was stopped", waited.as_secs());
                return ExitCode::from(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_taken_out_of_the_command_line() {
        let arguments = ["--address", "127.0.0.1:6379", "--token", "secret", "--token=also", "--num-cpus", "2"];
        let kept = without_token(arguments.iter().map(OsString::from).collect());
        assert_eq!(kept, ["--address", "127.0.0.1:6379", "--num-cpus", "2"].map(OsString::from));
        let with_file = without_token(["--token-file", "/run/t", "--head"].iter().map(OsString::from).collect());
        assert_eq!(with_file, [OsString::from("--head")]);
    }
}
