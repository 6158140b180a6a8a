//! Pidfiles, detached spawning, liveness and ownership checks, signals, and
//! small helpers for running commands and reading logs.
//!
//! Every process this module signals is identified by a PID read from one of
//! our pidfiles and is first checked to still be running the binary we
//! started (so a recycled PID is never signalled).

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a pidfile records: the PID, the binary we launched (to recognise the
/// process later) and the port it serves, if any.
///
/// On disk: `key=value` lines (`pid=`, `binary=`, `port=`). A bare number on
/// the first line is accepted as the PID (the format of many daemons' own
/// pidfiles, e.g. PostgreSQL's `postmaster.pid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    pub pid: u32,
    pub binary: Option<PathBuf>,
    pub port: Option<u16>,
}

impl PidFile {
    pub fn parse(text: &str) -> Option<PidFile> {
        let mut pid = None;
        let mut binary = None;
        let mut port = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some(("pid", v)) => pid = v.trim().parse::<u32>().ok(),
                Some(("binary", v)) if !v.trim().is_empty() => {
                    binary = Some(PathBuf::from(v.trim()))
                }
                Some(("port", v)) => port = v.trim().parse::<u16>().ok(),
                Some(_) => {}
                None if i == 0 => pid = line.parse::<u32>().ok(),
                None => {}
            }
        }
        let pid = pid.filter(|p| *p > 0 && *p <= i32::MAX as u32)?;
        Some(PidFile { pid, binary, port })
    }

    pub fn render(&self) -> String {
        let mut s = format!("pid={}\n", self.pid);
        if let Some(b) = &self.binary {
            s.push_str(&format!("binary={}\n", b.display()));
        }
        if let Some(p) = self.port {
            s.push_str(&format!("port={p}\n"));
        }
        s
    }

    pub fn read(path: &Path) -> Option<PidFile> {
        fs::read_to_string(path)
            .ok()
            .and_then(|t| PidFile::parse(&t))
    }

    /// Written atomically (temporary file + rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.render().as_bytes())
    }

    /// True when the recorded process is alive and still runs our binary.
    pub fn is_running(&self) -> bool {
        match &self.binary {
            Some(b) => is_alive(self.pid) && is_ours(self.pid, b),
            None => false,
        }
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ok();
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// Like [`write_atomic`], but the file is readable and writable by its owner only (mode 0600)
/// from its first byte: for passwords and tokens.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    remove_file_if_exists(&tmp)?;
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ok();
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// 32 random bytes from the operating system's generator, hex-encoded (64 characters, safe in
/// URLs, shell files and configuration files without quoting).
pub fn random_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The process state letter from `/proc/<pid>/stat` (R, S, D, Z, T, ...).
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Alive and not a zombie. A zombie that is our own child is reaped here, so
/// processes this CLI spawned and then lost do not linger as zombies.
pub fn is_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    let mut status: libc::c_int = 0;
    // SAFETY: plain syscall; fails with ECHILD for processes that are not our children.
    unsafe {
        libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
    }
    !matches!(process_state(pid), None | Some('Z') | Some('X'))
}

/// argv of a running process, from `/proc/<pid>/cmdline`.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// Does `pid` run `binary`? Checked against `/proc/<pid>/exe` and the command
/// line (argv[0], or any argument naming the binary — scripts run through an
/// interpreter show up that way).
pub fn is_ours(pid: u32, binary: &Path) -> bool {
    let want = binary.to_string_lossy().into_owned();
    if want.is_empty() {
        return false;
    }
    let canonical = fs::canonicalize(binary).ok();
    if let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) {
        let exe_s = exe.to_string_lossy();
        let exe_s = exe_s.strip_suffix(" (deleted)").unwrap_or(&exe_s);
        if exe_s == want || canonical.as_deref() == Some(Path::new(exe_s)) {
            return true;
        }
    }
    match cmdline(pid) {
        Some(args) => args
            .iter()
            .any(|a| a == &want || a.starts_with(&format!("{want} "))),
        None => false,
    }
}

/// Send `sig` to `pid`, refusing PIDs that would mean a process group or us.
pub fn send_signal(pid: u32, sig: i32) -> Result<()> {
    if pid <= 1 || pid > i32::MAX as u32 {
        bail!("refusing to signal PID {pid}");
    }
    if pid == std::process::id() {
        bail!("refusing to signal our own process ({pid})");
    }
    // SAFETY: kill(2) with a positive PID targets exactly that process.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(err).with_context(|| format!("kill({pid}, {sig})"));
    }
    Ok(())
}

/// Poll until `pid` is gone, up to `timeout`. True when gone.
pub async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stop `pid` if it is alive and runs `binary`: `first_signal`, wait up to
/// `grace`, then SIGKILL. A PID that no longer runs our binary is left alone.
pub async fn terminate(pid: u32, binary: &Path, first_signal: i32, grace: Duration) -> Result<()> {
    if !is_alive(pid) {
        return Ok(());
    }
    if !is_ours(pid, binary) {
        tracing::warn!(pid, binary = %binary.display(), "PID from pidfile now runs something else; not signalling it");
        return Ok(());
    }
    send_signal(pid, first_signal).or_else(|e| if is_alive(pid) { Err(e) } else { Ok(()) })?;
    // A process stopped by SIGSTOP (fault injection) only acts on the signal once continued.
    let _ = send_signal(pid, libc::SIGCONT);
    if wait_gone(pid, grace).await {
        return Ok(());
    }
    tracing::warn!(pid, "process did not exit after {grace:?}; sending SIGKILL");
    if is_alive(pid) && is_ours(pid, binary) {
        send_signal(pid, libc::SIGKILL).or_else(|e| if is_alive(pid) { Err(e) } else { Ok(()) })?;
    }
    if !wait_gone(pid, Duration::from_secs(10)).await {
        bail!(
            "process {pid} ({}) is still alive after SIGKILL",
            binary.display()
        );
    }
    Ok(())
}

/// How to launch a detached process.
pub struct DetachedSpec<'a> {
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: &'a Path,
    pub cwd: Option<&'a Path>,
    /// (uid, gid) to switch to before exec (when we are root).
    pub user: Option<(u32, u32)>,
    /// A network namespace (`/run/netns/<name>`, see `netns`) to run in instead of ours: the
    /// process is the program itself (its PID is the one recorded), not `ip netns exec`.
    pub netns: Option<&'a str>,
}

/// A log that has grown past this when its process is started again is moved to `<log>.1`
/// (replacing the previous one): a capacity run writes about a gigabyte of service logs, and
/// appending run after run would fill the disk.
const LOG_ROTATE_BYTES: u64 = 256 * 1024 * 1024;

/// Moves `log` to `<log>.1` if it is larger than `limit` bytes.
fn rotate_if_large(log: &Path, limit: u64) -> Result<()> {
    match fs::metadata(log) {
        Ok(meta) if meta.len() > limit => {
            let mut older = log.as_os_str().to_owned();
            older.push(".1");
            fs::rename(log, &older).with_context(|| format!("rotating log {}", log.display()))
        }
        _ => Ok(()),
    }
}

/// Spawn a process in its own session (so it survives us and never sees the
/// terminal's Ctrl-C), stdin from /dev/null, stdout+stderr appended to a log.
pub fn spawn_detached(spec: &DetachedSpec<'_>) -> Result<Child> {
    if let Some(parent) = spec.log.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    rotate_if_large(spec.log, LOG_ROTATE_BYTES)?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log)
        .with_context(|| format!("opening log {}", spec.log.display()))?;
    writeln!(
        log,
        "===== {} starting {} {}",
        chrono::Utc::now().to_rfc3339(),
        spec.program.display(),
        spec.args.join(" ")
    )
    .with_context(|| format!("writing log {}", spec.log.display()))?;
    let log_err = log.try_clone().context("duplicating log file handle")?;
    let mut cmd = Command::new(spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (OsStr::new(k), OsStr::new(v))))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    if let Some(dir) = spec.cwd {
        cmd.current_dir(dir);
    }
    // Opened here, entered in the child: setns(2) between fork and exec moves only the child.
    // It needs root, so the child enters the namespace first and switches user afterwards (by
    // hand: std's `Command::uid` would switch before any `pre_exec` runs).
    let netns = spec
        .netns
        .map(|name| {
            let path = netns_path(name);
            File::open(&path)
                .with_context(|| format!("opening network namespace {}", path.display()))
        })
        .transpose()?;
    let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let user = spec.user;
    // SAFETY: setsid, setns, setgroups, setgid and setuid are async-signal-safe system calls;
    // nothing else runs between fork and exec, and the namespace's file stays open in the
    // parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == -1 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setsid())?;
            if let Some(fd) = netns_fd {
                check(libc::setns(fd, libc::CLONE_NEWNET))?;
            }
            if let Some((uid, gid)) = user {
                // Supplementary groups go first (root's would stay otherwise), then the group,
                // then the user (after which nothing else may change).
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("spawning {}", spec.program.display()))
}

/// Spawns `spec` detached and records its pidfile (pid, binary, port); returns the pid.
pub fn spawn_recorded(spec: &DetachedSpec<'_>, pidfile: &Path, port: u16) -> Result<u32> {
    let child = spawn_detached(spec)?;
    let pid = child.id();
    drop(child);
    PidFile {
        pid,
        binary: Some(spec.program.to_path_buf()),
        port: Some(port),
    }
    .write(pidfile)?;
    Ok(pid)
}

/// Errors, with the last lines of its log, when `pid` ended before it got ready.
pub fn ensure_alive(pid: u32, what: &str, log: &Path) -> Result<()> {
    if is_alive(pid) {
        return Ok(());
    }
    bail!(
        "{what} (pid {pid}) exited before becoming ready; last lines of {}:\n{}",
        log.display(),
        tail_file(log, 30)
    )
}

/// The output of a command that must have succeeded; an error with its output's tail if not.
pub fn require_success(
    program: &Path,
    args: &[&str],
    out: std::process::Output,
) -> Result<std::process::Output> {
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}):\n{}",
            program.display(),
            args.join(" "),
            out.status,
            tail_text(&combined_output(&out), 40)
        );
    }
    Ok(out)
}

/// Run a command to completion and return its output, whatever its exit status.
pub async fn run(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    user: Option<(u32, u32)>,
    cwd: Option<&Path>,
) -> Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.output()
        .await
        .with_context(|| format!("running {} {}", program.display(), args.join(" ")))
}

pub fn combined_output(out: &std::process::Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.is_empty() {
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&err);
    }
    s
}

/// The last `n` lines of `text`.
pub fn tail_text(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// The last `n` lines of a file (reading at most its last 64 KiB).
pub fn tail_file(path: &Path, n: usize) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(64 * 1024);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => tail_text(&text, n),
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

static APT_UPDATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `apt-get install -y --no-install-recommends <pkgs>` non-interactively, after
/// one `apt-get update` per process.
pub async fn apt_install(pkgs: &[&str]) -> Result<()> {
    let apt = which("apt-get")
        .or_else(|| Some(PathBuf::from("/usr/bin/apt-get")).filter(|p| is_executable(p)))
        .with_context(|| format!("apt-get not found; install {} by hand", pkgs.join(" ")))?;
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    if !APT_UPDATED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        tracing::info!("apt-get update");
        let update = ["update", "-q"];
        let updated = run(&apt, &update, &env, None, None).await;
        if let Err(e) = updated.and_then(|out| require_success(&apt, &update, out)) {
            APT_UPDATED.store(false, std::sync::atomic::Ordering::SeqCst);
            return Err(e);
        }
    }
    tracing::info!(packages = %pkgs.join(" "), "apt-get install (this can take a minute)");
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(pkgs);
    require_success(&apt, &args, run(&apt, &args, &env, None, None).await?)?;
    Ok(())
}

/// Locate an executable by name on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// An exclusive advisory lock (`flock`) on a file, held until dropped; the kernel releases it
/// when the process ends, however it ends. Guards the state directory while infrastructure
/// starts or stops, and the machine while a load run measures it.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// The lock if nobody holds it, else `None`.
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>> {
        use std::os::fd::AsRawFd;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: flock on a valid fd we own; released when the file is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(FileLock { _file: file }));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(err).with_context(|| format!("locking {}", path.display()))
        }
    }

    /// Waits up to `timeout` for the lock; `holder` says who is likely to hold it.
    pub async fn acquire(path: &Path, timeout: Duration, holder: &str) -> Result<FileLock> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(lock) = Self::try_acquire(path)? {
                return Ok(lock);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for the lock {} ({holder})",
                    path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Is something accepting TCP connections on 127.0.0.1:`port`?
pub async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Where `ip netns add` puts a namespace's handle.
pub fn netns_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/run/netns").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_roundtrip() {
        let p = PidFile {
            pid: 4242,
            binary: Some(PathBuf::from("/x/target/debug/order-service")),
            port: Some(8081),
        };
        assert_eq!(PidFile::parse(&p.render()), Some(p));
    }

    #[test]
    fn pidfile_bare_pid_and_postmaster_format() {
        assert_eq!(
            PidFile::parse("123\n"),
            Some(PidFile {
                pid: 123,
                binary: None,
                port: None
            })
        );
        // postmaster.pid: pid, data dir, start time, port, socket dir, ...
        let pm = "3161\n/work/main/.run/pg/data\n1732531234\n55432\n/tmp\n127.0.0.1\n  55432001         0\nready   \n";
        assert_eq!(PidFile::parse(pm).map(|p| p.pid), Some(3161));
    }

    #[test]
    fn pidfile_rejects_garbage() {
        assert_eq!(PidFile::parse(""), None);
        assert_eq!(PidFile::parse("pid=0\n"), None);
        assert_eq!(PidFile::parse("pid=-5\n"), None);
        assert_eq!(PidFile::parse("hello\n"), None);
        assert_eq!(PidFile::parse("pid=99999999999\n"), None);
        assert_eq!(
            PidFile::parse("# comment\nport=abc\npid= 77 \nbinary=\n"),
            Some(PidFile {
                pid: 77,
                binary: None,
                port: None
            })
        );
    }

    #[test]
    fn own_process_is_alive_and_ours() {
        let me = std::process::id();
        assert!(is_alive(me));
        let exe = std::env::current_exe().expect("current exe");
        assert!(is_ours(me, &exe));
        assert!(!is_ours(me, Path::new("/definitely/not/this")));
        assert!(send_signal(me, 0).is_err());
        assert!(send_signal(1, 0).is_err());
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_text("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_text("a", 5), "a");
    }

    #[test]
    fn a_large_log_is_rotated_once() {
        let dir = std::env::temp_dir().join(format!("ordersys-rotate-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("svc.log");
        fs::write(&log, b"0123456789").unwrap();
        rotate_if_large(&log, 100).unwrap();
        assert!(log.exists(), "a small log stays");
        rotate_if_large(&log, 5).unwrap();
        assert!(!log.exists());
        assert_eq!(fs::read(dir.join("svc.log.1")).unwrap(), b"0123456789");
        rotate_if_large(&log, 5).unwrap(); // no log: nothing to do
        fs::remove_dir_all(&dir).unwrap();
    }
}
