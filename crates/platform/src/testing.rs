//! Support for integration tests: a unique name per test (databases, subject and stream
//! prefixes), and polling a condition with a deadline. Where the servers are and a fresh
//! database per test come from `system_tests::servers`, which brings them up through `stack`.

use std::future::Future;
use std::time::Duration;

/// A short unique token for names (databases, stream prefixes).
pub fn unique_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
