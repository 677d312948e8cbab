//! Process hardening before keyd holds a key: no core dumps (a dump would hold every working
//! key in memory), memory locked where the OS allows it (no key paged to swap), and refusal to
//! run on files anyone else can read or write.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::Error;

/// Turns off core dumps and ptrace attach by other users (PR_SET_DUMPABLE 0), and locks
/// current and future memory if the process may (CAP_IPC_LOCK or a large enough
/// RLIMIT_MEMLOCK); a refused lock is logged, not fatal, since most hosts do not grant it.
///
/// # Errors
/// [`Error::Config`] if core dumps cannot be turned off.
pub fn process() -> Result<(), Error> {
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| Error::Config(format!("cannot turn core dumps off: {e}")))?;
    use nix::sys::mman::{MlockAllFlags, mlockall};
    match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        Ok(()) => tracing::info!("memory locked; core dumps off"),
        Err(e) => tracing::warn!(
            error = %e,
            "memory not locked (needs CAP_IPC_LOCK or a higher RLIMIT_MEMLOCK); core dumps off"
        ),
    }
    Ok(())
}

/// Refuses a file or directory that others (not owner, not group) may access.
///
/// # Errors
/// [`Error::Config`] naming the path and its mode.
pub fn not_world_accessible(path: &Path) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o007 != 0 => Err(Error::Config(format!(
            "{} is accessible to every user (mode {:o}); refusing to run",
            path.display(),
            meta.permissions().mode() & 0o777
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_accessible_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.db");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(not_world_accessible(&file).is_ok());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            not_world_accessible(&file)
                .unwrap_err()
                .to_string()
                .contains("mode 644")
        );
        assert!(not_world_accessible(&dir.path().join("missing")).is_ok());
    }
}
