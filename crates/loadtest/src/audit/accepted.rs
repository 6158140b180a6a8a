//! `accepted orders`: every order the API accepted (`202`, its id read from the answer) exists
//! in the orders database and is final. The other checks look at the rows that exist; this one
//! catches an order that was acknowledged to its buyer and then lost with a write the cluster
//! (or a database failover) did not keep.

use sqlx::postgres::PgPool;
use uuid::Uuid;

use super::check::name_ids as name;
use super::Check;

pub const CHECK_ACCEPTED_ORDERS: &str = "accepted orders";

/// Orders looked up per query.
const CHUNK: usize = 10_000;

/// The check over `accepted` (the load generator's 202 answers).
pub async fn accepted_orders(orders: &PgPool, accepted: &[Uuid]) -> anyhow::Result<Check> {
    let mut missing = Vec::new();
    let mut open = Vec::new();
    for chunk in accepted.chunks(CHUNK) {
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM orders WHERE id = ANY($1)")
                .bind(chunk)
                .fetch_all(orders)
                .await?;
        let found: std::collections::HashMap<Uuid, String> = rows.into_iter().collect();
        for id in chunk {
            match found.get(id).map(String::as_str) {
                None => missing.push(*id),
                Some("COMPLETED" | "FAILED") => {}
                Some(_) => open.push(*id),
            }
        }
    }
    Ok(verdict(accepted.len(), &missing, &open))
}

fn verdict(accepted: usize, missing: &[Uuid], open: &[Uuid]) -> Check {
    if missing.is_empty() && open.is_empty() {
        return Check::new(
            CHECK_ACCEPTED_ORDERS,
            true,
            format!("all {accepted} orders answered 202 exist and are final"),
        );
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "{} accepted but missing: {}",
            missing.len(),
            name(missing)
        ));
    }
    if !open.is_empty() {
        problems.push(format!(
            "{} accepted but not final: {}",
            open.len(),
            name(open)
        ));
    }
    Check::new(
        CHECK_ACCEPTED_ORDERS,
        false,
        format!("of {accepted} orders answered 202, {}", problems.join("; ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_or_open_order_fails_and_is_named() {
        assert!(verdict(3, &[], &[]).passed);
        let lost = Uuid::from_u128(7);
        let check = verdict(3, &[lost], &[]);
        assert!(!check.passed);
        assert!(check.detail.contains(&lost.to_string()), "{}", check.detail);
        let many: Vec<Uuid> = (0..25).map(Uuid::from_u128).collect();
        let check = verdict(30, &[], &many);
        assert!(check.detail.contains("25 accepted but not final"));
        assert!(check.detail.contains("(and 5 more)"));
    }
}
