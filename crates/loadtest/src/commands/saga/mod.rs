//! `loadtest saga`: one order's whole story — what each service recorded about it, the events
//! still in an outbox, those the consumers took, dead letters and re-drives, in time order —
//! and the verdict (final, waiting for which service since when, stuck on which dead letter)
//! with the command that would unstick it; `--stuck` gives the verdict of every open saga older
//! than a threshold. It reads the services' admin routes (`GET /admin/sagas/{order_id}` on each,
//! `GET /admin/sagas` on the order service) with the deployment's admin token.

pub mod story;
pub mod verdict;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::deploy::admin::AdminClient;
use story::{age, clock, Endpoints, Service, Story, Told};
use verdict::{verdict, Remedy, Verdict};

/// One order's story with its verdict: what `loadtest saga <order-id>` prints.
#[derive(Debug, Clone, Serialize)]
pub struct SagaReport {
    pub order_id: Uuid,
    pub verdict: Verdict,
    /// The verdict as one line.
    pub line: String,
    pub remedy: Option<Remedy>,
    pub timeline: Vec<story::Entry>,
    /// What each service told, as it told it.
    pub story: Story,
}

impl SagaReport {
    pub fn new(story: Story, endpoints: &Endpoints, now: DateTime<Utc>) -> SagaReport {
        let verdict = verdict(&story);
        SagaReport {
            order_id: story.order_id,
            line: verdict.line(now),
            remedy: verdict.remedy(endpoints),
            timeline: story.timeline(),
            verdict,
            story,
        }
    }

    /// Asks the three services about `order_id` and judges what they tell.
    pub async fn fetch(admin: &AdminClient, endpoints: &Endpoints, order_id: Uuid) -> SagaReport {
        let story = Story::fetch(admin, endpoints, order_id).await;
        SagaReport::new(story, endpoints, Utc::now())
    }

    /// The timeline, then the verdict and the remedy.
    pub fn text(&self) -> String {
        let mut out = format!("order {}\n", self.order_id);
        for service in Service::ALL {
            if let Told::Unanswered(error) = self.story.told(service) {
                let _ = writeln!(
                    out,
                    "  ({} service did not answer: {error})",
                    service.name()
                );
            }
        }
        for entry in &self.timeline {
            let _ = writeln!(
                out,
                "  {}  {:<9}  {}",
                clock(entry.at),
                entry.service.name(),
                entry.what
            );
        }
        let _ = writeln!(out, "verdict: {}", self.line);
        if let Some(remedy) = &self.remedy {
            let _ = writeln!(out, "unstick: {}", remedy.command);
            let _ = writeln!(out, "         ({})", remedy.note);
        }
        out
    }
}

/// `loadtest saga <order-id>`: prints the story (or its JSON); returns whether it is final.
pub async fn show(
    admin: &AdminClient,
    endpoints: &Endpoints,
    order_id: Uuid,
    as_json: bool,
) -> Result<bool> {
    let report = SagaReport::fetch(admin, endpoints, order_id).await;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(report.verdict.is_final())
}

/// One open saga as `--stuck` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct StuckSaga {
    pub order_id: Uuid,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub verdict: Verdict,
    pub line: String,
    pub remedy: Option<Remedy>,
}

/// The open sagas created longer ago than `older_than` (at most `limit`, oldest first), each
/// with its verdict.
pub async fn stuck_sagas(
    admin: &AdminClient,
    endpoints: &Endpoints,
    older_than: Duration,
    limit: u32,
) -> Result<Vec<StuckSaga>> {
    let open = admin
        .open_sagas(&endpoints.order, older_than, limit)
        .await?;
    let mut listed = Vec::with_capacity(open.len());
    for saga in open {
        let report = SagaReport::fetch(admin, endpoints, saga.order_id).await;
        listed.push(StuckSaga {
            order_id: saga.order_id,
            status: saga.status,
            created_at: saga.created_at,
            verdict: report.verdict,
            line: report.line,
            remedy: report.remedy,
        });
    }
    Ok(listed)
}

/// `loadtest saga --stuck`: prints the open sagas older than `older_than` with their verdicts;
/// returns how many there are.
pub async fn show_stuck(
    admin: &AdminClient,
    endpoints: &Endpoints,
    older_than: Duration,
    limit: u32,
    as_json: bool,
) -> Result<usize> {
    let listed = stuck_sagas(admin, endpoints, older_than, limit).await?;
    if as_json {
        let value: Value = json!({
            "older_than_seconds": older_than.as_secs_f64(),
            "sagas": listed,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(listed.len());
    }
    let now = Utc::now();
    println!(
        "{} open saga(s) older than {}{}",
        listed.len(),
        age(chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX)),
        if listed.len() as u32 >= limit {
            format!(" (the oldest {limit}; --limit for more)")
        } else {
            String::new()
        }
    );
    for saga in &listed {
        println!(
            "{}  {:<9} placed {} ({} ago)  {}",
            saga.order_id,
            saga.status,
            clock(saga.created_at),
            age(now - saga.created_at),
            saga.line
        );
        if let Some(remedy) = &saga.remedy {
            println!("    unstick: {}", remedy.command);
        }
    }
    Ok(listed.len())
}
