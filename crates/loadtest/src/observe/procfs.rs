//! The one reader of `/proc`: CPU and memory of a process (or a process and its children) and
//! of the whole machine.

use std::fs;

/// Clock ticks per second, the unit of `/proc`'s CPU times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// Own user + system ticks.
    pub cpu_ticks: u64,
    /// User + system ticks of the children it has reaped.
    pub reaped_ticks: u64,
}

/// Parses `/proc/<pid>/stat`; the command name may hold spaces and parentheses.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: [0] state, [1] ppid, …, [11] utime, [12] stime, [13] cutime, [14] cstime.
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(number(1)?).ok()?,
        cpu_ticks: number(11)? + number(12)?,
        reaped_ticks: number(13)? + number(14)?,
    })
}

/// Resident set size in KiB from the text of `/proc/<pid>/status`.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    status_field(status, "VmRSS:")
}

/// Resident memory counters of `/proc/<pid>/status` in KiB: (private anonymous, file-backed,
/// shared memory). The kernel keeps them as counters, so reading them is cheap (unlike summing
/// PSS from `smaps_rollup`, which walks every page table: docs/performance.md).
pub fn parse_resident_kib(status: &str) -> Option<(u64, u64, u64)> {
    Some((
        status_field(status, "RssAnon:")?,
        status_field(status, "RssFile:")?,
        status_field(status, "RssShmem:")?,
    ))
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU seconds and resident MiB of one process.
pub fn process_usage(pid: u32) -> Option<(f64, f64)> {
    let stat = parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = parse_status_rss_kib(&status).unwrap_or(0);
    Some((
        stat.cpu_ticks as f64 / ticks_per_second(),
        rss_kib as f64 / 1024.0,
    ))
}

/// CPU seconds and memory of a process and its children. CPU is the parent's own time, the time
/// of children it has reaped, and the live children's time. Memory is each process's private
/// resident memory plus the largest file-backed and the largest shared resident set (the
/// binary, libraries and PostgreSQL's shared buffers are shared by all of them: counted once).
pub fn tree_usage(root: u32) -> Option<(f64, f64)> {
    let root_stat = parse_stat(&fs::read_to_string(format!("/proc/{root}/stat")).ok()?)?;
    let mut ticks = root_stat.cpu_ticks + root_stat.reaped_ticks;
    let mut pids = vec![root];
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(stat) = parse_stat(&text).filter(|s| s.ppid == root) {
            ticks += stat.cpu_ticks;
            pids.push(pid);
        }
    }
    let (mut private, mut file, mut shared) = (0, 0, 0);
    let resident =
        |pid: u32| parse_resident_kib(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?);
    for (anon, file_kib, shmem) in pids.iter().filter_map(|&pid| resident(pid)) {
        private += anon;
        file = file.max(file_kib);
        shared = shared.max(shmem);
    }
    Some((
        ticks as f64 / ticks_per_second(),
        (private + file + shared) as f64 / 1024.0,
    ))
}

/// CPU ticks the machine has been busy (all cores): `/proc/stat`'s first line, all but idle
/// and iowait.
pub fn parse_cpu_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle))
}

/// CPU seconds the whole machine has been busy since boot (all cores).
pub fn machine_busy_seconds() -> Option<f64> {
    let ticks = parse_cpu_busy_ticks(&fs::read_to_string("/proc/stat").ok()?)?;
    Some(ticks as f64 / ticks_per_second())
}

/// E.g. "2 cores, 24 GiB".
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| status_field(&text, "MemTotal:"))
        .map_or("unknown memory".to_string(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    format!("{cores} cores, {memory}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "4242 (post gres: x) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                ppid: 17,
                cpu_ticks: 300,
                reaped_ticks: 10
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_the_resident_memory_counters() {
        let status = "Name:\tpostgres\nVmRSS:\t  300 kB\nRssAnon:\t  100 kB\nRssFile:\t  50 kB\nRssShmem:\t  150 kB\n";
        assert_eq!(parse_resident_kib(status), Some((100, 50, 150)));
        assert_eq!(parse_status_rss_kib(status), Some(300));
        assert_eq!(parse_resident_kib("Name:\tx\nVmRSS:\t 1 kB\n"), None);
        assert_eq!(parse_status_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn our_own_process_is_measurable() {
        let (cpu, memory) = tree_usage(std::process::id()).expect("our own /proc entry");
        assert!(cpu >= 0.0);
        assert!(memory > 0.0);
        assert!(process_usage(std::process::id()).is_some());
    }

    #[test]
    fn machine_cpu_from_proc_stat() {
        let stat = "cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(parse_cpu_busy_ticks(stat), Some(160));
        assert_eq!(parse_cpu_busy_ticks("nonsense"), None);
        assert!(machine_busy_seconds().expect("/proc/stat") > 0.0);
        assert!(machine().contains("cores"));
    }
}
