//! One process per embedded store (`DATA_DIR`): the embedded store is single-node.
//!
//! Why: each process keeps live tickets in memory and arms their SLA timers itself; two processes on one
//! SQLite file would answer from stale copies and fire each timer twice. Cluster mode needs PostgreSQL. So a
//! process holds an exclusive lock on `DATA_DIR/.lock` for its whole life (the kernel releases it when the
//! process ends, however it ends), and a second one refuses to start.

use std::fs::File;
use std::path::Path;

use anyhow::Context as _;

/// The lock, held while this value lives.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Take the lock of `dir` (created if needed), or say who holds it.
    pub fn take(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                // Who holds it, for the next one's message (informative only: the lock is what counts).
                let _ = file.set_len(0);
                let _ = std::io::Write::write_all(&mut &file, std::process::id().to_string().as_bytes());
                Ok(DataDirLock { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "another ticket-supervisor process (pid {}) uses the embedded store in {}: the embedded store \
                     is single-node — stop the other process, give this one its own DATA_DIR, or run several \
                     replicas on PostgreSQL (DATABASE_URL), which is cluster mode",
                    if holder.trim().is_empty() { "unknown" } else { holder.trim() },
                    dir.display()
                )
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_of_one_data_dir_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::take(dir.path()).unwrap();
        let err = DataDirLock::take(dir.path()).err().expect("refused").to_string();
        assert!(err.contains("single-node") && err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        DataDirLock::take(dir.path()).expect("free again");
    }
}
