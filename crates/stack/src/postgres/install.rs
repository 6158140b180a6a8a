//! The PostgreSQL server binaries (found, or apt-installed as root) and the system user the
//! server runs as when we are root (PostgreSQL refuses to run as root).

use super::PgConfig;
use crate::process;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

fn has_server_bins(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| process::is_executable(&dir.join(b)))
}

/// "15" → [15], "9.6" → [9, 6].
pub(super) fn parse_major_dir(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|p| p.parse::<u32>().ok()).collect()
}

/// `ORDERSYS_PG_BIN_DIR`, else the highest `/usr/lib/postgresql/<v>/bin`, else
/// the directory of an `initdb` on PATH (symlinks resolved).
pub(super) fn find_bins() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ORDERSYS_PG_BIN_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_server_bins(&dir) {
            return Some(dir);
        }
        tracing::warn!(dir = %dir.display(), "ORDERSYS_PG_BIN_DIR lacks initdb/pg_ctl/postgres; ignoring it");
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = parse_major_dir(&e.file_name().to_string_lossy())?;
            let bin = e.path().join("bin");
            has_server_bins(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    let initdb = fs::canonicalize(process::which("initdb")?).ok()?;
    let dir = initdb.parent()?.to_path_buf();
    has_server_bins(&dir).then_some(dir)
}

pub(super) async fn ensure_bins() -> Result<PathBuf> {
    if let Some(dir) = find_bins() {
        return Ok(dir);
    }
    if !is_root() {
        bail!("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found and we are not root to install them: `apt-get install postgresql`, or set ORDERSYS_DATABASE_URL to an existing server");
    }
    tracing::info!("PostgreSQL server binaries not found; installing Debian's postgresql package");
    process::apt_install(&["postgresql"]).await?;
    find_bins().context(
        "installed the postgresql package but found no initdb/pg_ctl/postgres under /usr/lib/postgresql/*/bin",
    )
}

pub(super) async fn check_major_version(cfg: &PgConfig) -> Result<()> {
    let data = cfg.data();
    let cluster = fs::read_to_string(data.join("PG_VERSION"))
        .with_context(|| format!("reading {}", data.join("PG_VERSION").display()))?;
    let out = process::run(&cfg.postgres_bin(), &["--version"], &[], None, None).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
    let server_major = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .unwrap_or("");
    if !server_major.is_empty() && server_major != cluster.trim() {
        bail!(
            "the cluster in {} was made by PostgreSQL {} but the server binaries in {} are {}: remove that directory (it only holds load-test data) or point ORDERSYS_PG_BIN_DIR at version {}",
            data.display(),
            cluster.trim(),
            cfg.bin_dir.display(),
            server_major,
            cluster.trim()
        );
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam_r writes into `pwd` and `buf`, both owned here and large enough
    // (ERANGE otherwise, handled as "not found").
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return None;
        }
        Some((pwd.pw_uid, pwd.pw_gid))
    }
}

/// The (uid, gid) to run the server as: `postgres` when we are root (created
/// if missing, since PostgreSQL refuses to run as root), else ourselves (None).
pub(super) async fn server_user() -> Result<Option<(u32, u32)>> {
    if !is_root() {
        return Ok(None);
    }
    if let Some(ids) = lookup_user("postgres") {
        return Ok(Some(ids));
    }
    let useradd = process::which("useradd")
        .or_else(|| Some(PathBuf::from("/usr/sbin/useradd")).filter(|p| process::is_executable(p)))
        .context("no `postgres` user and no useradd to create it")?;
    tracing::info!("creating the postgres system user");
    let args = [
        "--system",
        "--user-group",
        "--home-dir",
        "/var/lib/postgresql",
        "--no-create-home",
        "--shell",
        "/bin/sh",
        "postgres",
    ];
    let out = process::run(&useradd, &args, &[], None, None).await?;
    process::require_success(&useradd, &args, out)?;
    lookup_user("postgres")
        .map(Some)
        .context("created the postgres user but cannot look it up")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_dir_parsing_orders_numerically() {
        assert_eq!(parse_major_dir("15"), Some(vec![15]));
        assert_eq!(parse_major_dir("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_major_dir("bin"), None);
        let mut v = [
            parse_major_dir("9.6"),
            parse_major_dir("16"),
            parse_major_dir("10"),
        ];
        v.sort();
        assert_eq!(v.last(), Some(&Some(vec![16])));
    }
}
