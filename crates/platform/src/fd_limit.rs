//! File descriptors are the budget every connection draws on — the listeners' connections, the
//! database pools, the broker, the log files. A process starts with the soft limit its parent
//! had (often 1,024), far below the hard limit the system allows; once it is spent, accepting,
//! connecting to the database and reconnecting to the broker fail together. So every service
//! raises its soft limit to the hard limit at start, logs both, and bounds its listeners'
//! connection caps so that the rest always keeps its share.

use std::sync::OnceLock;

/// Descriptors kept for everything that is not a client connection: the pools are counted on
/// top of this; it covers the broker (a connection per server of a cluster while reconnecting),
/// migrations, log files, the runtime's own, and connections being refused (`crate::server`).
pub const RESERVED: u64 = 512;

/// Raises the soft limit on open files to the hard limit, once per process (later calls return
/// the same), and logs it. Returns the soft limit now in force (`None` if it cannot be read).
pub fn raise_to_hard_limit() -> Option<u64> {
    static RAISED: OnceLock<Option<u64>> = OnceLock::new();
    *RAISED.get_or_init(|| {
        let before = rlimit::Resource::NOFILE.get();
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(soft) => {
                let (was, hard) = before.map_or((None, None), |(s, h)| (Some(s), Some(h)));
                tracing::info!(
                    soft_limit = soft,
                    was = was.unwrap_or(soft),
                    hard_limit = hard.unwrap_or(soft),
                    "file descriptor limit raised to the hard limit"
                );
                Some(soft)
            }
            Err(error) => {
                let soft = before.ok().map(|(soft, _)| soft);
                tracing::warn!(%error, soft_limit = soft, "cannot raise the file descriptor limit");
                soft
            }
        }
    })
}

/// The connection caps of the public and the admin listener that fit under `limit` descriptors
/// with `pools` database connections and [`RESERVED`] kept: the configured ones when they fit,
/// else the public cap is lowered (never below 1), so that no number of clients can take the
/// descriptors the database and the broker need.
pub fn fit_connection_caps(limit: u64, pools: u64, public: usize, admin: usize) -> (usize, usize) {
    let spare = limit.saturating_sub(RESERVED.saturating_add(pools));
    let admin = admin
        .min(usize::try_from(spare / 2).unwrap_or(usize::MAX))
        .max(1);
    let wanted = (public as u64).saturating_add(admin as u64);
    if wanted <= spare {
        return (public, admin);
    }
    let fitted = spare.saturating_sub(admin as u64).max(1);
    (usize::try_from(fitted).unwrap_or(public).min(public), admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let soft = raise_to_hard_limit().expect("limit readable");
        let (now_soft, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
        assert_eq!(soft, now_soft);
        if hard != rlimit::INFINITY {
            assert_eq!(now_soft, hard);
        }
        assert_eq!(raise_to_hard_limit(), Some(soft), "once per process");
    }

    #[test]
    fn caps_that_fit_are_kept_and_others_leave_the_reserve() {
        assert_eq!(fit_connection_caps(20_000, 16, 8_192, 256), (8_192, 256));
        let (public, admin) = fit_connection_caps(4_096, 16, 8_192, 256);
        assert_eq!(admin, 256);
        assert_eq!(public as u64 + admin as u64 + 16 + RESERVED, 4_096);
        assert_eq!(fit_connection_caps(600, 16, 8_192, 256), (36, 36));
        assert_eq!(fit_connection_caps(100, 16, 8_192, 256), (1, 1));
    }
}
