//! What `/proc` says about a process under test: CPU time spent and memory figures, for tests
//! that check a server stays idle or bounded under a hostile client.

use std::process::Command;

use crate::Error;

/// User plus system CPU seconds a process has used so far.
///
/// # Errors
/// If `/proc/<pid>/stat` cannot be read or parsed.
pub fn cpu_seconds(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .ok_or("malformed /proc stat")?;
    let mut fields = after.split(' ').skip(11);
    let mut next =
        || -> Result<u64, Error> { Ok(fields.next().ok_or("short /proc stat")?.parse::<u64>()?) };
    let ticks = next()? + next()?;
    #[allow(clippy::cast_precision_loss, reason = "CPU ticks of a test process")]
    Ok(ticks as f64 / 100.0)
}

/// A `kB` figure of `/proc/<pid>/status` (`VmPeak`, `VmLck`, `VmRSS`...).
///
/// # Errors
/// If the file cannot be read or has no such line.
pub fn status_kib(pid: u32, field: &str) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .ok_or_else(|| format!("no {field} in /proc status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed /proc status")?
        .parse()?)
}

/// Whether the process's main thread is blocked reading its standard input: `None` where
/// `/proc/<pid>/syscall` cannot be read (another user's non-dumpable process) or on an
/// architecture whose `read` number this does not know.
pub fn reading_stdin(pid: u32) -> Option<bool> {
    let read = if cfg!(target_arch = "x86_64") {
        "0"
    } else if cfg!(target_arch = "aarch64") {
        "63"
    } else {
        return None;
    };
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let mut fields = text.split_whitespace();
    Some(fields.next() == Some(read) && fields.next() == Some("0x0"))
}

/// A command that runs `binary` under a descriptor limit of `n` (soft and hard), as a systemd
/// unit with `LimitNOFILE=n` would.
pub fn with_nofile(binary: &std::path::Path, n: u64) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
        .arg(binary);
    sh
}
