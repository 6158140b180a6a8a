//! What became of a transaction whose COMMIT went unanswered. A connection lost while the
//! COMMIT is in flight (or after the first write) leaves the outcome open: the server may have
//! committed and lost only the answer ("already committed locally"). PostgreSQL's way to find
//! out is the transaction's id: `pg_xact_status(xid)` says `committed`, `aborted` or
//! `in progress` (the server has not noticed the lost connection yet; asked again shortly).
//! It is asked on a fresh connection — the pool's may be as broken as the one just lost —
//! until a deadline; past it the outcome stays unknown and the client is told so.
//!
//! Counted in `order_commit_outcome_total{outcome="committed"|"aborted"|"unknown"}`, one per
//! commit in doubt.

use sqlx::{ConnectOptions, PgPool};
use std::time::Duration;
use tokio::time::Instant;

/// However late the requests are, the database is asked at least for this long.
pub(super) const MIN_INQUIRY: Duration = Duration::from_millis(500);
/// Pause between two questions while the transaction is still in progress or the database
/// cannot be reached.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommitOutcome {
    Committed,
    /// Nothing of the transaction was kept.
    Aborted,
    /// Could not be found out in time.
    Unknown,
}

impl CommitOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitOutcome::Committed => "committed",
            CommitOutcome::Aborted => "aborted",
            CommitOutcome::Unknown => "unknown",
        }
    }
}

/// Whether a failure may have left the transaction committed: the connection was lost (or the
/// server went away) rather than the server reporting an error of its own, which always means
/// the transaction was rolled back.
pub(super) fn in_doubt(error: &crate::error::OrderError) -> bool {
    use crate::error::OrderError;
    use platform::outbox::OutboxError;
    let database_error = match error {
        OrderError::Database(e) | OrderError::Outbox(OutboxError::Database(e)) => e,
        // Failed before the statement was sent (e.g. encoding): the COMMIT never was.
        _ => return false,
    };
    match database_error {
        // 08: connection exception; 57P: the server shut down or terminated the session (a
        // COMMIT waiting for a synchronous standby is terminated after committing locally).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => true,
    }
}

/// Asks on fresh connections until the answer is final or `until` passes.
pub(super) async fn inquire(pool: &PgPool, xid: i64, until: Instant) -> CommitOutcome {
    let options = pool.connect_options();
    let outcome = loop {
        let asked = tokio::time::timeout_at(until, async {
            let mut conn = options.connect().await?;
            let status: Option<String> =
                sqlx::query_scalar("SELECT pg_xact_status($1::text::xid8)")
                    .bind(xid.to_string())
                    .fetch_one(&mut conn)
                    .await?;
            let _ = sqlx::Connection::close(conn).await;
            Ok::<_, sqlx::Error>(status)
        })
        .await;
        match asked {
            Ok(Ok(Some(status))) if status == "committed" => break CommitOutcome::Committed,
            Ok(Ok(Some(status))) if status == "aborted" => break CommitOutcome::Aborted,
            // Too old to be known (cannot happen within a request's deadline), or unknown text.
            Ok(Ok(Some(status))) if status != "in progress" => break CommitOutcome::Unknown,
            Ok(Ok(None)) => break CommitOutcome::Unknown,
            Ok(Ok(Some(_))) => {}
            Ok(Err(error)) => tracing::debug!(%error, xid, "asking for a commit's outcome failed"),
            Err(_) => break CommitOutcome::Unknown,
        }
        if Instant::now() + ASK_AGAIN_AFTER >= until {
            break CommitOutcome::Unknown;
        }
        tokio::time::sleep(ASK_AGAIN_AFTER).await;
    };
    metrics::counter!("order_commit_outcome_total", "outcome" => outcome.as_str()).increment(1);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::OrderError;
    use platform::outbox::OutboxError;

    #[test]
    fn a_lost_connection_leaves_the_commit_in_doubt_and_other_failures_do_not() {
        let io = || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(in_doubt(&OrderError::Database(io())));
        assert!(in_doubt(&OrderError::Outbox(OutboxError::Database(io()))));
        assert!(in_doubt(&OrderError::Database(sqlx::Error::Protocol(
            "unexpected message".into()
        ))));
        assert!(!in_doubt(&OrderError::Unavailable));
        assert!(!in_doubt(&OrderError::Internal));
    }
}
