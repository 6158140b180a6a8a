//! One load run at a time on this machine: two runs on the same cores would measure each other.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use super::process::FileLock;

/// Where the lock lives: machine-wide, whichever checkout the CLI runs from.
pub fn lock_path() -> PathBuf {
    std::env::var_os("ORDERSYS_RUN_LOCK")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || PathBuf::from("/tmp/ordersys-loadrun.lock"),
            PathBuf::from,
        )
}

/// Takes the lock for the whole run, waiting (and saying so) while another run holds it.
pub async fn acquire() -> Result<FileLock> {
    let path = lock_path();
    if let Some(lock) = FileLock::try_acquire(&path)? {
        return Ok(lock);
    }
    println!(
        "▶ waiting for another load run on this machine to finish (lock {})…",
        path.display()
    );
    FileLock::acquire(
        &path,
        Duration::from_secs(24 * 3600),
        "another load run holds it",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("run-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        let first = FileLock::try_acquire(&path).unwrap().expect("free");
        assert!(FileLock::try_acquire(&path).unwrap().is_none());
        drop(first);
        assert!(FileLock::try_acquire(&path).unwrap().is_some());
        std::fs::remove_dir_all(&dir).ok();
    }
}
