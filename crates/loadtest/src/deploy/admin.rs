//! The services' admin API as the CLI uses it: seeding, dead letters (list, replay, discard),
//! one order's story and the open sagas, and fault hooks. Every call carries the deployment's admin token and `X-Operator: loadtest`, so
//! the services' audit log says who acted.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use platform::dead_letters::DeadLetter;
use platform::desk::BulkOutcome;
use platform::saga::{OpenSaga, SagaPart};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    token: String,
}

/// What to do with dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Replay,
    Discard,
}

impl Resolution {
    pub fn verb(self) -> &'static str {
        match self {
            Resolution::Replay => "replay",
            Resolution::Discard => "discard",
        }
    }
}

impl AdminClient {
    pub fn new(token: &str) -> Result<AdminClient> {
        Ok(AdminClient {
            http: super::http_client()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the HTTP client")?,
            token: token.to_owned(),
        })
    }

    /// Sends a request; returns the status and the JSON body (`null` when there is none).
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method.clone(), url)
            .bearer_auth(&self.token)
            .header("x-operator", "loadtest");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn expect(&self, method: Method, url: &str, body: Option<&Value>) -> Result<Value> {
        let (status, answer) = self.send(method.clone(), url, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {url} answered {status}: {answer}");
        }
        Ok(answer)
    }

    /// The dead letters of one service (`status`: open, replayed, discarded or all).
    pub async fn dead_letters(
        &self,
        base_url: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<Vec<DeadLetter>> {
        let mut url = format!("{base_url}/admin/dead-letters?status={status}&limit=10000");
        if let Some(reason) = reason {
            url.push_str(&format!("&reason={}", query_escape(reason)));
        }
        let body = self.expect(Method::GET, &url, None).await?;
        serde_json::from_value(body).context("reading the dead letters")
    }

    /// Replays or discards one dead letter.
    pub async fn resolve(&self, base_url: &str, id: i64, how: Resolution) -> Result<()> {
        let url = format!("{base_url}/admin/dead-letters/{id}/{}", how.verb());
        self.expect(Method::POST, &url, None).await.map(|_| ())
    }

    /// Replays or discards every open dead letter whose reason contains `reason`.
    pub async fn resolve_matching(
        &self,
        base_url: &str,
        reason: &str,
        how: Resolution,
    ) -> Result<BulkOutcome> {
        let url = format!("{base_url}/admin/dead-letters/{}", how.verb());
        let body = self
            .expect(Method::POST, &url, Some(&json!({ "reason": reason })))
            .await?;
        serde_json::from_value(body).context("reading the outcome")
    }

    /// What one service tells about one order (`GET /admin/sagas/{order_id}`).
    pub async fn saga_part(&self, base_url: &str, order_id: uuid::Uuid) -> Result<SagaPart> {
        let url = format!("{base_url}/admin/sagas/{order_id}");
        let body = self.expect(Method::GET, &url, None).await?;
        serde_json::from_value(body).with_context(|| format!("reading {url}"))
    }

    /// The order service's open sagas created longer ago than `older_than`, oldest first.
    pub async fn open_sagas(
        &self,
        base_url: &str,
        older_than: Duration,
        limit: u32,
    ) -> Result<Vec<OpenSaga>> {
        let url = format!(
            "{base_url}/admin/sagas?older_than={}&limit={limit}",
            age_param(older_than)
        );
        let body = self.expect(Method::GET, &url, None).await?;
        serde_json::from_value(body).with_context(|| format!("reading {url}"))
    }

    /// Arms (`Some(product)`) or disarms the panic hook of a service built with the
    /// `fault-injection` feature.
    pub async fn set_panic_hook(&self, base_url: &str, product: Option<i64>) -> Result<()> {
        let url = format!("{base_url}/admin/fault-hooks");
        let (status, answer) = self
            .send(
                Method::PUT,
                &url,
                Some(&json!({ "panic_on_product": product })),
            )
            .await?;
        match status {
            200 => Ok(()),
            404 => bail!(
                "{url} does not exist: the services were built without fault hooks; build them with `cargo build --workspace --bins --features platform/fault-injection` (the Makefile does when the scenario has a panic fault)"
            ),
            _ => bail!("PUT {url} answered {status}: {answer}"),
        }
    }
}

/// An age as the open-sagas route takes it: at most 7 digits and a unit (milliseconds while they
/// fit, else whole seconds, at most 115 days).
fn age_param(age: Duration) -> String {
    let millis = age.as_millis();
    if millis <= 9_999_999 {
        format!("{millis}ms")
    } else {
        format!("{}s", (millis / 1000).min(9_999_999))
    }
}

/// Percent-encodes a query value (reasons hold spaces, colons, quotes).
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_fit_the_route() {
        assert_eq!(age_param(Duration::from_secs(30)), "30000ms");
        assert_eq!(age_param(Duration::from_secs(86_400)), "86400s");
        assert_eq!(age_param(Duration::from_secs(u64::MAX)), "9999999s");
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_escape("fault hook: x/1"), "fault%20hook%3A%20x%2F1");
        assert_eq!(query_escape("plain-1.2_~"), "plain-1.2_~");
    }
}
