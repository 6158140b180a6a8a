//! One load run at a time on this machine: two runs on the same cores would measure each other.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;

/// Where the lock lives: machine-wide, whichever checkout the CLI runs from.
pub fn lock_path() -> PathBuf {
    std::env::var_os("ORDERSYS_RUN_LOCK")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || PathBuf::from("/tmp/ordersys-loadrun.lock"),
            PathBuf::from,
        )
}

/// Held for the whole run; the kernel releases it when the process ends, however it ends.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Takes the lock, waiting (and saying so) while another run holds it.
pub fn acquire() -> Result<RunLock> {
    let path = lock_path();
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the run lock {}", path.display()))?;
    if !try_lock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        println!(
            "▶ waiting for another load run to finish ({}, {})…",
            path.display(),
            holder.trim()
        );
        if !try_lock(&file, libc::LOCK_EX)? {
            bail!("could not lock {}", path.display());
        }
    }
    file.set_len(0).ok();
    writeln!(file, "pid {}", std::process::id()).ok();
    Ok(RunLock { _file: file })
}

fn try_lock(file: &File, operation: libc::c_int) -> Result<bool> {
    loop {
        // SAFETY: flock only reads the descriptor, which `file` keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(error).context("flock on the run lock"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_while_the_first_holds_it() {
        let dir = std::env::temp_dir().join(format!("run-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let first = open();
        assert!(try_lock(&first, libc::LOCK_EX | libc::LOCK_NB).unwrap());
        let second = open();
        assert!(!try_lock(&second, libc::LOCK_EX | libc::LOCK_NB).unwrap());
        drop(first);
        assert!(try_lock(&second, libc::LOCK_EX | libc::LOCK_NB).unwrap());
        std::fs::remove_dir_all(&dir).ok();
    }
}
