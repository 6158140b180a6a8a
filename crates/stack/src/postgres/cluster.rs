//! Our cluster on disk: where it lives (a directory the server's user can reach), initdb with
//! the superuser's password, the access rules (`pg_hba.conf`) and our settings file with the
//! server's TLS certificate.

use super::{socket_path, PgConfig, LOG_TAIL_LINES};
use crate::process;
use crate::StateDir;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Every connection, over TCP or the socket, authenticates with a password (SCRAM): with
/// `trust`, any local user could connect as any role, and the services' roles would guard
/// nothing.
pub(super) const HBA_TEXT: &str =
    "# Written by loadtest: every role authenticates with its password.\n\
local all all scram-sha-256\n\
host all all 127.0.0.1/32 scram-sha-256\n\
host all all ::1/128 scram-sha-256\n";

/// [`HBA_TEXT`], plus the hosts' subnet for a server on a host.
pub(super) fn hba_text(cfg: &PgConfig) -> String {
    match &cfg.placement {
        Some(p) => format!("{HBA_TEXT}host all all {} scram-sha-256\n", p.clients),
        None => HBA_TEXT.to_string(),
    }
}

pub(super) fn write_hba(cfg: &PgConfig, user: Option<(u32, u32)>) -> Result<()> {
    let hba = cfg.data().join("pg_hba.conf");
    fs::write(&hba, hba_text(cfg)).with_context(|| format!("writing {}", hba.display()))?;
    chown(&hba, user)
}

/// Can `uid` traverse every directory from / down to `dir`?
fn traversable_by(dir: &Path, uid: u32) -> bool {
    let Ok(dir) = fs::canonicalize(dir) else {
        return false;
    };
    dir.ancestors().all(|d| match fs::metadata(d) {
        Ok(m) => {
            let mode = m.permissions().mode();
            mode & 0o001 != 0 || (m.uid() == uid && mode & 0o100 != 0)
        }
        Err(_) => false,
    })
}

/// 32-bit FNV-1a, hex: a short stable tag of a path.
pub(super) fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// `<state>/pg`, or `/tmp/ordersys-<hash>/pg` when the server user cannot
/// reach into the state directory.
pub(super) fn choose_root(state: &StateDir, user: Option<(u32, u32)>) -> Result<PathBuf> {
    let preferred = state.path().join("pg");
    let Some((uid, _)) = user else {
        return Ok(preferred);
    };
    if traversable_by(state.path(), uid) {
        return Ok(preferred);
    }
    let outer = PathBuf::from(format!(
        "/tmp/ordersys-{}",
        short_hash(&state.path().to_string_lossy())
    ));
    fs::create_dir_all(&outer).with_context(|| format!("creating {}", outer.display()))?;
    let meta =
        fs::symlink_metadata(&outer).with_context(|| format!("inspecting {}", outer.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        bail!(
            "{} is not a directory owned by us; remove it or set ORDERSYS_STATE_DIR to a directory the postgres user can reach",
            outer.display()
        );
    }
    fs::set_permissions(&outer, fs::Permissions::from_mode(0o711))
        .with_context(|| format!("chmod {}", outer.display()))?;
    tracing::info!(
        state = %state.path().display(),
        pg_root = %outer.display(),
        "the postgres user cannot traverse into the state directory; keeping PostgreSQL data under /tmp"
    );
    Ok(outer.join("pg"))
}

fn chown(path: &Path, user: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {} to the postgres user", path.display()))?;
    }
    Ok(())
}

pub(super) fn prepare_root(cfg: &PgConfig, user: Option<(u32, u32)>) -> Result<()> {
    for (dir, mode) in [(cfg.root.clone(), 0o700), (cfg.socket_dir(), 0o755)] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        chown(&dir, user)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    Ok(())
}

pub(super) async fn initdb(
    cfg: &PgConfig,
    user: Option<(u32, u32)>,
    log: &Path,
    password: &str,
) -> Result<()> {
    let data = cfg.data().to_string_lossy().into_owned();
    tracing::info!(data = %data, "initdb");
    // initdb reads the superuser's password from a file (it runs as the server's user).
    let pwfile = cfg.root.join("initdb-password");
    process::write_private(&pwfile, password.as_bytes())?;
    chown(&pwfile, user)?;
    let pwfile_arg = format!("--pwfile={}", pwfile.display());
    let out = process::run(
        &cfg.bin_dir.join("initdb"),
        &[
            "-D",
            &data,
            "--auth=scram-sha-256",
            &pwfile_arg,
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
        ],
        &[("LC_ALL", "C")],
        user,
        Some(&cfg.root),
    )
    .await;
    process::remove_file_if_exists(&pwfile).ok();
    let out = out?;
    let text = process::combined_output(&out);
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
        use std::io::Write;
        let _ = writeln!(
            f,
            "===== {} initdb {data}\n{text}",
            chrono::Utc::now().to_rfc3339()
        );
    }
    if !out.status.success() {
        bail!(
            "initdb -D {data} failed ({}):\n{}",
            out.status,
            process::tail_text(&text, LOG_TAIL_LINES)
        );
    }
    Ok(())
}

/// Writes `ordersys.conf` (and the server's copy of the TLS certificate and key, which must
/// belong to the server's user); returns whether the settings changed.
pub(super) fn write_settings(
    state: &StateDir,
    cfg: &PgConfig,
    user: Option<(u32, u32)>,
) -> Result<bool> {
    let data = cfg.data();
    let tls = crate::tls::ensure(state)?;
    let (cert, key) = (cfg.root.join("server.pem"), cfg.root.join("server.key"));
    fs::copy(&tls.cert, &cert).with_context(|| format!("copying {}", cert.display()))?;
    process::write_private(&key, &fs::read(&tls.key).context("reading the TLS key")?)?;
    for file in [&cert, &key] {
        chown(file, user)?;
    }
    // A unix socket path is limited to 107 bytes; without room, TCP only.
    let socket_dir = socket_path(cfg);
    let conf = data.join("ordersys.conf");
    let text = crate::pg_settings::settings_text(
        &cfg.listen(),
        cfg.port,
        socket_dir.as_deref(),
        Some((&cert, &key)),
    );
    let changed = fs::read_to_string(&conf).map_or(true, |old| old != text);
    fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
    chown(&conf, user)?;
    let main_conf = data.join("postgresql.conf");
    let text = fs::read_to_string(&main_conf)
        .with_context(|| format!("reading {}", main_conf.display()))?;
    let include = "include_if_exists = 'ordersys.conf'";
    if !text.lines().any(|l| l.trim() == include) {
        let mut text = text;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(include);
        text.push('\n');
        fs::write(&main_conf, text).with_context(|| format!("writing {}", main_conf.display()))?;
        return Ok(true);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hash_is_stable() {
        assert_eq!(short_hash(""), "811c9dc5");
        assert_eq!(short_hash("/work/main/.run"), short_hash("/work/main/.run"));
        assert_ne!(short_hash("/a"), short_hash("/b"));
        assert_eq!(short_hash("/a").len(), 8);
    }
}
