//! `loadtest dead-letters`: an operator's view of every service's dead letters, and replaying or
//! discarding them through the services' admin API (each service records who did what).

use anyhow::{bail, Result};

use crate::deploy::admin::{AdminClient, Resolution};
use crate::deploy::{self, Credentials};

/// The services whose dead letters to look at: one, or all three.
pub fn services(service: Option<&str>) -> Result<Vec<(&'static str, String)>> {
    let all: Vec<(&'static str, String)> = deploy::SERVICES
        .iter()
        .map(|(name, port)| (*name, deploy::admin_url(*port)))
        .collect();
    match service {
        None => Ok(all),
        Some(wanted) => {
            let chosen: Vec<_> = all
                .into_iter()
                .filter(|(name, _)| {
                    *name == wanted || name.strip_suffix("-service") == Some(wanted)
                })
                .collect();
            if chosen.is_empty() {
                bail!("unknown service {wanted:?}: order, inventory or payment");
            }
            Ok(chosen)
        }
    }
}

/// Prints the dead letters of the chosen services; returns how many there are.
pub async fn list(
    credentials: &Credentials,
    service: Option<&str>,
    status: &str,
    reason: Option<&str>,
) -> Result<usize> {
    let admin = AdminClient::new(&credentials.admin_token)?;
    let mut total = 0;
    for (name, url) in services(service)? {
        let letters = admin.dead_letters(&url, status, reason).await?;
        println!("{name}: {} dead letters ({status})", letters.len());
        for l in &letters {
            println!(
                "  #{:<6} {:<10} {:<9} {} {} ×{} {}{}",
                l.id,
                l.kind,
                l.status,
                l.failed_at.format("%Y-%m-%dT%H:%M:%SZ"),
                l.consumer,
                l.deliveries,
                l.reason,
                l.resolved_by
                    .as_ref()
                    .map(|by| format!(" (resolved by {by})"))
                    .unwrap_or_default()
            );
        }
        total += letters.len();
    }
    Ok(total)
}

/// Replays or discards one dead letter (`id`, in one service) or every open one whose reason
/// contains `reason` (in the chosen services). Returns false when one could not be resolved.
pub async fn resolve(
    credentials: &Credentials,
    service: Option<&str>,
    id: Option<i64>,
    reason: Option<&str>,
    how: Resolution,
) -> Result<bool> {
    let admin = AdminClient::new(&credentials.admin_token)?;
    match (id, reason) {
        (Some(id), None) => {
            let chosen = services(service)?;
            let [(name, url)] = &chosen[..] else {
                bail!("--id needs --service: dead letter ids are per service");
            };
            admin.resolve(url, id, how).await?;
            let done = match how {
                Resolution::Replay => "replayed",
                Resolution::Discard => "discarded",
            };
            println!("{name}: dead letter #{id} {done}");
            Ok(true)
        }
        (None, Some(reason)) => {
            let mut all_resolved = true;
            for (name, url) in services(service)? {
                let outcome = admin.resolve_matching(&url, reason, how).await?;
                println!(
                    "{name}: {} matched, {} resolved, {} failed",
                    outcome.matched,
                    outcome.resolved,
                    outcome.failed.len()
                );
                for failure in &outcome.failed {
                    println!("  #{}: {}", failure.id, failure.error);
                }
                all_resolved &= outcome.failed.is_empty();
            }
            Ok(all_resolved)
        }
        _ => bail!("give either --id N (with --service) or --reason TEXT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_chosen_by_short_or_full_name() {
        assert_eq!(services(None).unwrap().len(), 3);
        assert_eq!(services(Some("payment")).unwrap()[0].0, "payment-service");
        assert_eq!(
            services(Some("inventory-service")).unwrap()[0].1,
            "http://127.0.0.1:19081"
        );
        assert!(services(Some("shipping")).is_err());
    }
}
