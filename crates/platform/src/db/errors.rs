//! What a database error means for the caller, decided once for every path: an HTTP handler's
//! problem (`503` + `Retry-After` or `500`), the order intake's answer to a failed batch, and a
//! consumer's choice between redelivering and dead-lettering.
//!
//! "Unavailable" is a database that cannot take this work *now* but may later — unreachable,
//! shutting down, read-only (a replica promoted the wrong way, `default_transaction_read_only`),
//! out of disk, memory or connections. Such an error is never the request's or the message's
//! fault: over HTTP it is `503` with `Retry-After`, never `500`; a consumer redelivers the event
//! without limit and never dead-letters it.

/// SQLSTATE classes and codes that mean the database cannot do this work now (PostgreSQL
/// Appendix A): connection exceptions (08), operator intervention (57P: shutdown, crash,
/// cannot connect now, database dropped), insufficient resources (53: disk full 53100, out of
/// memory 53200, too many connections 53300, configuration limit 53400), system errors (58:
/// I/O error), and a read-only transaction asked to write (25006).
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("57P")
        || code.starts_with("53")
        || code.starts_with("58")
        || code == "25006"
}

/// Whether the database cannot be used for this work right now (a retry later may pass).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| is_unavailable_code(&c)),
        _ => false,
    }
}

/// Whether the same statement may pass if tried again: the database is unavailable, or the
/// transaction lost a deadlock or serialization conflict, or hit a lock or statement timeout.
pub fn is_retryable(error: &sqlx::Error) -> bool {
    is_unavailable(error)
        || error
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|c| matches!(&*c, "40001" | "40P01" | "55P03" | "57014"))
}

/// A short, fixed description of an unavailable database for answers that leave the process
/// (`/ready`); the error itself is logged, never sent.
pub fn unavailable_reason(error: &sqlx::Error) -> &'static str {
    let code = error.as_database_error().and_then(|db| db.code());
    match code.as_deref() {
        Some("25006") => "database is read-only",
        Some("53100") => "database is out of disk space",
        Some("53200") => "database is out of memory",
        Some("53300") => "database refuses connections: too many",
        Some(code) if code.starts_with("53") => "database is out of resources",
        Some(code) if code.starts_with("57P") => "database is shutting down or starting",
        Some(_) => "database cannot write",
        None if matches!(error, sqlx::Error::PoolTimedOut) => "no database connection free in time",
        None => "database unreachable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::error::{DatabaseError, ErrorKind};
    use std::borrow::Cow;

    /// A server error with a given SQLSTATE, as the driver would report it.
    #[derive(Debug)]
    struct ServerError(&'static str);

    impl std::fmt::Display for ServerError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "server error {}", self.0)
        }
    }

    impl std::error::Error for ServerError {}

    impl DatabaseError for ServerError {
        fn message(&self) -> &str {
            "server error"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn server(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(ServerError(code)))
    }

    #[test]
    fn read_only_full_out_of_resources_and_unreachable_are_unavailable() {
        for code in [
            "25006", // read_only_sql_transaction
            "53000", // insufficient_resources
            "53100", // disk_full
            "53200", // out_of_memory
            "53300", // too_many_connections
            "53400", // configuration_limit_exceeded
            "08000", // connection_exception
            "08006", // connection_failure
            "57P01", // admin_shutdown
            "57P02", // crash_shutdown
            "57P03", // cannot_connect_now
            "57P04", // database_dropped
            "58030", // io_error
        ] {
            let error = server(code);
            assert!(is_unavailable(&error), "{code} is unavailable");
            assert!(is_retryable(&error), "{code} is retryable");
        }
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::other("reset")),
            sqlx::Error::WorkerCrashed,
        ] {
            assert!(is_unavailable(&error), "{error}");
        }
    }

    #[test]
    fn conflicts_and_timeouts_are_retryable_but_not_unavailable() {
        for code in ["40001", "40P01", "55P03", "57014"] {
            let error = server(code);
            assert!(!is_unavailable(&error), "{code}");
            assert!(is_retryable(&error), "{code}");
        }
    }

    #[test]
    fn the_request_s_or_the_code_s_faults_are_neither() {
        // unique violation, check violation, numeric out of range, syntax error, other 25xxx
        for code in ["23505", "23514", "22003", "42601", "25001", "25P02"] {
            let error = server(code);
            assert!(!is_unavailable(&error), "{code}");
            assert!(!is_retryable(&error), "{code}");
        }
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_unavailable(&sqlx::Error::Protocol("odd".into())));
    }

    #[test]
    fn reasons_sent_out_are_fixed_texts_by_kind() {
        assert_eq!(
            unavailable_reason(&server("25006")),
            "database is read-only"
        );
        assert_eq!(
            unavailable_reason(&server("53100")),
            "database is out of disk space"
        );
        assert_eq!(
            unavailable_reason(&server("53300")),
            "database refuses connections: too many"
        );
        assert_eq!(
            unavailable_reason(&sqlx::Error::Io(std::io::Error::other("refused"))),
            "database unreachable"
        );
    }
}
