//! The packet holder behind the `delay` network fault (`loadtest net-delay`, hidden): bound to
//! an NFQUEUE queue inside a host's namespace, it receives every packet the host's firewall
//! queues, holds each for `delay ± jitter` and then lets it go on (accept).
//!
//! `sch_netem` is not built into every kernel (it is not on the machines this project runs on),
//! and none of the qdiscs that could hold packets by time (fq with EDT) is either, so the delay
//! is made in user space. Packets leave in the order they came (each is released at
//! `max(previous release, arrival + delay + jitter)`): jitter that reordered a TCP stream would
//! add duplicate ACKs and spurious retransmissions that a real path with a variable queueing
//! delay does not produce. The price is that under a steady stream the delay drifts towards
//! `delay + jitter`; for request/response traffic it is `delay ± jitter`.
//!
//! Only packet metadata is copied to user space (not the payload), and large offloaded TCP
//! segments are queued whole (GSO), so holding costs little. If the queue fills
//! ([`MAX_HELD`]) the kernel lets new packets pass (fail-open) instead of dropping them, and the
//! firewall rule uses `--queue-bypass`, so a delayer that dies or was never started never turns
//! a delay into a partition. On SIGTERM/SIGINT every held packet is released before exit.

use anyhow::{Context, Result};
use nfq::{Queue, Verdict};
use rand::Rng;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Packets the kernel holds for us at most; more pass undelayed (fail-open). At 50 ms this is
/// about 160,000 packets a second, far more than a host of this system sends.
pub const MAX_HELD: u32 = 8192;
/// When the queue's socket cannot be waited on (see [`new_socket`]), how often it is read: a
/// packet's arrival is then seen up to this late (its delay is that much longer).
const POLL: Duration = Duration::from_millis(1);
/// The longest wait when nothing is held (to notice SIGTERM even if poll is not interrupted).
const IDLE: Duration = Duration::from_millis(200);

/// What to hold packets for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelaySettings {
    pub queue: u16,
    pub delay: Duration,
    /// Each packet's delay is uniform in `delay - jitter ..= delay + jitter` (never below zero).
    pub jitter: Duration,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Holds packets until SIGTERM or SIGINT. `ready_file` is written once the queue is bound, so
/// the caller knows when packets start being delayed.
pub fn run(settings: DelaySettings, ready_file: Option<&Path>) -> Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            request_stop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            request_stop as *const () as libc::sighandler_t,
        );
    }
    let q = settings.queue;
    let before = open_fds();
    let mut queue = Queue::open().context("opening a netfilter queue socket (root needed)")?;
    let socket = new_socket(&before, &open_fds());
    queue
        .bind(q)
        .with_context(|| format!("binding NFQUEUE queue {q}"))?;
    // Metadata only (the verdict needs the packet id, not the bytes); whole GSO segments.
    queue.set_copy_range(q, 0).context("setting copy range")?;
    queue
        .set_recv_gso(q, true)
        .context("accepting GSO packets")?;
    queue.set_fail_open(q, true).context("setting fail-open")?;
    queue
        .set_queue_max_len(q, MAX_HELD)
        .context("setting queue length")?;
    queue.set_nonblocking(true);
    if let Some(path) = ready_file {
        stack::process::write_atomic(path, format!("queue={q}\n").as_bytes())?;
    }
    println!(
        "holding packets of queue {q} for {:?} ± {:?} ({})",
        settings.delay,
        settings.jitter,
        match socket {
            Some(fd) => format!("waiting on socket fd {fd}"),
            None => format!("socket not found: reading every {POLL:?}"),
        }
    );
    let mut held = Held::new(settings);
    loop {
        let stopping = STOP.load(Ordering::SeqCst);
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(Verdict::Accept);
                    held.push(Instant::now(), msg);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("receiving from the netfilter queue"),
            }
        }
        let now = Instant::now();
        while let Some(msg) = held.pop_due(now, stopping) {
            queue.verdict(msg).context("releasing a packet")?;
        }
        if stopping {
            println!("stopped; every held packet released");
            return Ok(());
        }
        let wait = held.next_due(now).unwrap_or(IDLE);
        match socket {
            Some(fd) => wait_readable(fd, wait),
            None => std::thread::sleep(wait.min(POLL)),
        }
    }
}

/// The process's open file descriptors, each with what it refers to (`socket:[inode]`, a path).
fn open_fds() -> Vec<(i32, PathBuf)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd = entry.file_name().to_str()?.parse().ok()?;
        Some((fd, std::fs::read_link(entry.path()).ok()?))
    })
    .collect()
}

/// The one socket in `after` that was not open in `before`: the queue's netlink socket, which
/// `nfq` does not expose. (Compared with its target, not its number alone: the listing's own
/// directory descriptor is freed and its number reused.) Only waited on (ppoll), never read,
/// so `nfq` keeps sole use of it. `None` (read the queue every [`POLL`] instead) unless exactly
/// one was found.
fn new_socket(before: &[(i32, PathBuf)], after: &[(i32, PathBuf)]) -> Option<i32> {
    let mut new = after
        .iter()
        .filter(|fd| !before.contains(fd))
        .filter(|(_, target)| target.to_string_lossy().starts_with("socket:"));
    match (new.next(), new.next()) {
        (Some((fd, _)), None) => Some(*fd),
        _ => None,
    }
}

/// Sleeps until `fd` has something to read or `timeout` passed.
fn wait_readable(fd: i32, timeout: Duration) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // ppoll, not poll: its timeout has nanoseconds, so a release is not rounded to a millisecond.
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: one valid pollfd and timespec; no signal mask; an error (EINTR on SIGTERM) just
    // ends the wait early.
    unsafe {
        libc::ppoll(&mut pollfd, 1, &timeout, std::ptr::null());
    }
}

/// Packets in the order they must leave, each with its release time (never earlier than the
/// one before it).
struct Held<T> {
    settings: DelaySettings,
    packets: VecDeque<(Instant, T)>,
    last_release: Option<Instant>,
}

impl<T> Held<T> {
    fn new(settings: DelaySettings) -> Held<T> {
        Held {
            settings,
            packets: VecDeque::new(),
            last_release: None,
        }
    }

    /// The delay of one packet: `delay ± jitter`, uniform.
    fn sample(&self) -> Duration {
        let DelaySettings { delay, jitter, .. } = self.settings;
        if jitter.is_zero() {
            return delay;
        }
        let j = i128::try_from(jitter.as_nanos()).unwrap_or(i128::MAX);
        let offset = rand::thread_rng().gen_range(-j..=j);
        let nanos = i128::try_from(delay.as_nanos())
            .unwrap_or(i128::MAX)
            .saturating_add(offset)
            .max(0);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn push(&mut self, arrived: Instant, packet: T) {
        let mut at = arrived + self.sample();
        if let Some(last) = self.last_release {
            at = at.max(last);
        }
        self.last_release = Some(at);
        self.packets.push_back((at, packet));
    }

    /// The next packet if it is due (or, when `all`, whatever its time).
    fn pop_due(&mut self, now: Instant, all: bool) -> Option<T> {
        match self.packets.front() {
            Some((at, _)) if all || *at <= now => self.packets.pop_front().map(|(_, p)| p),
            _ => None,
        }
    }

    /// How long until the next packet is due.
    fn next_due(&self, now: Instant) -> Option<Duration> {
        self.packets
            .front()
            .map(|(at, _)| at.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(delay_ms: u64, jitter_ms: u64) -> DelaySettings {
        DelaySettings {
            queue: 0,
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
        }
    }

    #[test]
    fn packets_leave_in_order_within_delay_and_jitter() {
        let mut held = Held::new(settings(50, 10));
        let t0 = Instant::now();
        for i in 0..1000u32 {
            held.push(t0 + Duration::from_millis(u64::from(i) * 100), i);
        }
        let times: Vec<Instant> = held.packets.iter().map(|(at, _)| *at).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "released in order");
        // Sparse packets (100 ms apart) are not held back by their predecessors.
        for (i, at) in times.iter().enumerate() {
            let d = *at - (t0 + Duration::from_millis(i as u64 * 100));
            assert!(
                d >= Duration::from_millis(40) && d <= Duration::from_millis(60),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_burst_is_released_no_earlier_than_its_first_packet_and_all_on_stop() {
        let mut held = Held::new(settings(50, 0));
        let t0 = Instant::now();
        for i in 0..3 {
            held.push(t0, i);
        }
        assert_eq!(held.pop_due(t0 + Duration::from_millis(49), false), None);
        assert_eq!(held.next_due(t0), Some(Duration::from_millis(50)));
        assert_eq!(held.pop_due(t0 + Duration::from_millis(50), false), Some(0));
        assert_eq!(held.pop_due(t0, true), Some(1));
        assert_eq!(held.pop_due(t0, true), Some(2));
        assert_eq!(held.pop_due(t0, true), None);
    }

    #[test]
    fn the_queue_socket_is_the_one_new_socket_even_on_a_reused_number() {
        let fd = |n: i32, target: &str| (n, PathBuf::from(target));
        let before = [fd(3, "socket:[1]"), fd(9, "/proc/7/fd")];
        let after = [fd(3, "socket:[1]"), fd(9, "socket:[2]")];
        assert_eq!(new_socket(&before, &after), Some(9));
        let two = [
            fd(3, "socket:[1]"),
            fd(9, "socket:[2]"),
            fd(10, "socket:[3]"),
        ];
        assert_eq!(
            new_socket(&before, &two),
            None,
            "ambiguous: fall back to polling"
        );
        assert_eq!(new_socket(&before, &before), None);
        assert!(open_fds()
            .iter()
            .any(|(n, _)| *n == 0 || *n == 1 || *n == 2));
    }

    #[test]
    fn jitter_larger_than_delay_never_goes_negative() {
        let held: Held<()> = Held::new(settings(1, 10));
        for _ in 0..1000 {
            assert!(held.sample() <= Duration::from_millis(11));
        }
    }
}
