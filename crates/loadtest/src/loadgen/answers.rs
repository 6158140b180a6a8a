//! What each request of a run was finally told, by its Idempotency-Key: the record the audit's
//! `answered orders` check holds every stored order against (`audit/answers.rs`).
//!
//! Every order a run places carries a key unique to the run: `<run tag>-<request number>` for
//! the load generator (the number is the request's index in the schedule, so the record is a
//! slot in a vector, not a map entry), `<run tag>-<name>` for the few orders faults place.

use std::collections::HashMap;
use uuid::Uuid;

/// The final answer to one request, after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalAnswer {
    /// `202`: the order (or, replayed, the key's original order).
    Accepted(Uuid),
    /// `500 /problems/outcome-unknown`: the server could not tell whether this order was written.
    OutcomeUnknown(Uuid),
    /// `503` or `429`: told nothing was written.
    NotWritten(u16),
    /// Another 4xx: the order was refused (nothing written).
    Refused(u16),
    /// Another 5xx (or a 202 whose order could not be read): promises nothing either way.
    Unclear(u16),
    /// No answer: a timeout or a transport error.
    NoAnswer,
    /// Never sent (no worker free at its intended start).
    Dropped,
}

/// A request's final answer and how many times it was sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRecord {
    pub answer: FinalAnswer,
    pub retries: u8,
}

/// The final answer of every request of a run, by key.
#[derive(Debug, Default)]
pub struct RequestLog {
    /// `<run tag>-`: every key of the run starts with it.
    prefix: String,
    /// The load generator's requests, by request number.
    generated: Vec<Option<RequestRecord>>,
    /// Requests of faults, by the key's part after the prefix.
    named: HashMap<String, RequestRecord>,
}

impl RequestLog {
    pub fn new(prefix: String) -> RequestLog {
        RequestLog {
            prefix,
            ..RequestLog::default()
        }
    }

    /// What every key of the run starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of the generator's request `n`.
    pub fn key_of_request(prefix: &str, n: usize) -> String {
        format!("{prefix}{n}")
    }

    /// The key of a named request (a fault's); names do not start with a digit.
    pub fn key_of_named(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn record(&mut self, n: usize, record: RequestRecord) {
        if self.generated.len() <= n {
            self.generated.resize(n + 1, None);
        }
        self.generated[n] = Some(record);
    }

    pub fn record_named(&mut self, name: &str, record: RequestRecord) {
        self.named.insert(name.to_owned(), record);
    }

    /// The record of a key, if a request of this run was sent with it.
    pub fn lookup(&self, key: &str) -> Option<&RequestRecord> {
        let rest = key.strip_prefix(&self.prefix)?;
        if rest.starts_with(|c: char| c.is_ascii_digit()) {
            let n: usize = rest.parse().ok()?;
            self.generated.get(n)?.as_ref()
        } else {
            self.named.get(rest)
        }
    }

    /// Every record: the generator's, then the named ones.
    pub fn records(&self) -> impl Iterator<Item = &RequestRecord> {
        self.generated.iter().flatten().chain(self.named.values())
    }

    /// The ids of the orders answered `202`.
    pub fn accepted(&self) -> Vec<Uuid> {
        self.records()
            .filter_map(|r| match r.answer {
                FinalAnswer::Accepted(id) => Some(id),
                _ => None,
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.generated.is_empty() && self.named.is_empty()
    }
}

/// What kind of answer an HTTP status (and, for a 500, its problem type) is. `order` is the
/// order id the body names (a 202's order, an outcome-unknown's order).
pub fn classify(status: u16, outcome_unknown: bool, order: Option<Uuid>) -> FinalAnswer {
    match (status, order) {
        (202, Some(id)) => FinalAnswer::Accepted(id),
        (500, Some(id)) if outcome_unknown => FinalAnswer::OutcomeUnknown(id),
        (503 | 429, _) => FinalAnswer::NotWritten(status),
        (400..=499, _) => FinalAnswer::Refused(status),
        _ => FinalAnswer::Unclear(status),
    }
}

/// A fresh tag for a run's keys: 8 hex digits and a dash.
pub fn run_prefix() -> String {
    format!("{:08x}-", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_find_their_records_and_foreign_keys_find_none() {
        let mut log = RequestLog::new("ab12cd34-".into());
        let id = Uuid::from_u128(9);
        let accepted = RequestRecord {
            answer: FinalAnswer::Accepted(id),
            retries: 1,
        };
        log.record(3, accepted);
        log.record_named("panic-0", accepted);
        assert_eq!(RequestLog::key_of_request(log.prefix(), 3), "ab12cd34-3");
        assert_eq!(log.lookup("ab12cd34-3"), Some(&accepted));
        assert_eq!(log.lookup(&log.key_of_named("panic-0")), Some(&accepted));
        assert_eq!(log.lookup("ab12cd34-2"), None, "a slot never filled");
        assert_eq!(log.lookup("ab12cd34-40"), None);
        assert_eq!(log.lookup("ffffffff-3"), None, "another run's key");
        assert_eq!(log.lookup("ab12cd34-x"), None);
        assert_eq!(log.accepted(), vec![id, id]);
    }

    #[test]
    fn answers_are_classified_by_what_they_promise() {
        let id = Some(Uuid::from_u128(1));
        assert_eq!(
            classify(202, false, id),
            FinalAnswer::Accepted(Uuid::from_u128(1))
        );
        assert_eq!(
            classify(500, true, id),
            FinalAnswer::OutcomeUnknown(Uuid::from_u128(1))
        );
        assert_eq!(classify(500, false, None), FinalAnswer::Unclear(500));
        assert_eq!(classify(503, false, None), FinalAnswer::NotWritten(503));
        assert_eq!(classify(429, false, None), FinalAnswer::NotWritten(429));
        assert_eq!(classify(409, false, None), FinalAnswer::Refused(409));
        assert_eq!(classify(202, false, None), FinalAnswer::Unclear(202));
    }
}
