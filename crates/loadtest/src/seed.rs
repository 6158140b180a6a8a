//! Test data over the services' admin API, and the buyers' tokens.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::json;

use crate::deploy::admin::AdminClient;
use crate::deploy::{base_url, Credentials, INVENTORY_PORT, PAYMENT_PORT};
use crate::plan::scenario::Scenario;

/// Where seeding sends products and accounts: an inventory and a payment instance.
#[derive(Debug, Clone)]
pub struct SeedTargets {
    pub inventory: String,
    pub payment: String,
}

impl SeedTargets {
    /// The `up` stack's instances on 127.0.0.1.
    pub fn local() -> SeedTargets {
        SeedTargets {
            inventory: base_url(INVENTORY_PORT),
            payment: base_url(PAYMENT_PORT),
        }
    }
}

/// What seeding did: how many rows were created and how many already existed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedSummary {
    pub products_created: usize,
    pub products_existing: usize,
    pub accounts_created: usize,
    pub accounts_existing: usize,
}

/// The balance user `user` (1-based) starts with: the last `low_balance_users` users get
/// `low_balance_cents`, the others `initial_balance_cents`.
pub fn balance_of(scenario: &Scenario, user: u32) -> i64 {
    let data = &scenario.data;
    if user > data.users - data.low_balance_users {
        data.low_balance_cents
    } else {
        data.initial_balance_cents
    }
}

/// Creates the scenario's products (inventory) and accounts (payment). A 409 means the row
/// exists already and is counted, not treated as an error.
/// `services` are the base URLs of an inventory and a payment instance.
pub async fn seed(
    scenario: &Scenario,
    credentials: &Credentials,
    services: &SeedTargets,
) -> Result<SeedSummary> {
    let admin = AdminClient::new(&credentials.admin_token)?;
    let mut summary = SeedSummary::default();

    for product in &scenario.data.products {
        let body = json!({
            "id": product.id,
            "name": format!("Product {}", product.id),
            "price_cents": product.price_cents,
            "stock": product.stock,
        });
        let url = format!("{}/products", services.inventory);
        match create(&admin, &url, &body).await? {
            Created::New => summary.products_created += 1,
            Created::Existing => summary.products_existing += 1,
        }
    }

    // Accounts in parallel: 50 sequential round trips are slow for no reason.
    let url = format!("{}/accounts", services.payment);
    let results = futures::future::join_all((1..=scenario.data.users).map(|user| {
        let body = json!({ "user_id": user, "balance_cents": balance_of(scenario, user) });
        let (url, admin) = (&url, &admin);
        async move { create(admin, url, &body).await }
    }))
    .await;
    for result in results {
        match result? {
            Created::New => summary.accounts_created += 1,
            Created::Existing => summary.accounts_existing += 1,
        }
    }
    Ok(summary)
}

pub(crate) enum Created {
    New,
    Existing,
}

/// Creates a row over the admin API; a 409 means it exists already.
pub(crate) async fn create(
    admin: &AdminClient,
    url: &str,
    body: &serde_json::Value,
) -> Result<Created> {
    let (status, answer) = admin.send(Method::POST, url, Some(body)).await?;
    match status {
        200 | 201 => Ok(Created::New),
        409 => Ok(Created::Existing),
        _ => bail!("POST {url} {body} answered {status}: {answer}"),
    }
}

/// One signed token per user 1..=users, valid for `ttl`.
pub fn mint_tokens(secret: &str, users: u32, ttl: Duration) -> Result<Vec<String>> {
    let keys = platform::auth::TokenKeys::with_secret(secret);
    (1..=users)
        .map(|user| {
            keys.mint(i64::from(user), ttl)
                .with_context(|| format!("signing a token for user {user}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_users_get_the_low_balance() {
        let scenario = Scenario::from_toml_str(
            r#"
            name = "t"
            [load]
            stages = [{ duration = "1s", target = 1 }]
            [data]
            users = 5
            initial_balance_cents = 1000
            low_balance_users = 2
            low_balance_cents = 10
            products = [{ id = 1, stock = 1, price_cents = 1 }]
            "#,
        )
        .expect("valid");
        let balances: Vec<i64> = (1..=5).map(|u| balance_of(&scenario, u)).collect();
        assert_eq!(balances, vec![1000, 1000, 1000, 10, 10]);
    }

    #[test]
    fn tokens_carry_their_user() {
        let tokens = mint_tokens("s", 3, Duration::from_secs(60)).expect("signed");
        assert_eq!(tokens.len(), 3);
        for (i, token) in tokens.iter().enumerate() {
            assert_eq!(
                platform::auth::TokenKeys::with_secret("s")
                    .verify(token)
                    .expect("valid"),
                i as i64 + 1
            );
        }
    }
}
