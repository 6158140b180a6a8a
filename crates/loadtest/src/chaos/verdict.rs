//! From the probe's samples, each fault's verdict: when the system noticed it, when it caught
//! up after the lift, the worst it got meanwhile, and the `faults` check. Pure functions over
//! [`HealthSample`]s; the sampling is `probe`'s.

use super::probe::{Health, HealthSample, REDRIVES};
use super::slow_clients::{judge_window, LoadFigures};
use super::{
    FaultKind, InjectedFault, CHECK_FAULTS, RECOVERY_MAX_CONSUMER_BACKLOG,
    RECOVERY_MAX_OLDEST_UNFINISHED_S, RECOVERY_MAX_OUTBOX, RECOVERY_SAMPLES,
};
use crate::audit::Check;
use crate::report::FaultRecord;

/// The last value of a counter at or before `t`.
fn counter_at(samples: &[HealthSample], counter: &str, t: f64) -> Option<u64> {
    samples
        .iter()
        .rev()
        .filter(|s| s.at_s <= t)
        .find_map(|s| s.counters.get(counter).copied())
}

/// The first sample in `from_s..=to_s` in which the system showed it noticed: an instance's
/// `/ready` said 503 or did not answer (what a load balancer sees), or one of its healing
/// counters moved. Seconds after `from_s`, and what.
pub fn noticed_between(samples: &[HealthSample], from_s: f64, to_s: f64) -> Option<(f64, String)> {
    samples
        .iter()
        .filter(|s| (from_s..=to_s).contains(&s.at_s))
        .find_map(|s| {
            if let Some((who, why)) = s.not_ready.first() {
                return Some((s.at_s - from_s, format!("/ready 503 from {who}: {why}")));
            }
            if let Some(who) = s.unreachable.first() {
                return Some((s.at_s - from_s, format!("/ready did not answer from {who}")));
            }
            let moved: Vec<String> = s
                .counters
                .iter()
                .filter_map(|(counter, value)| {
                    let before = counter_at(samples, counter, from_s).unwrap_or(0);
                    (*value > before).then(|| format!("{counter} +{}", value - before))
                })
                .collect();
            (!moved.is_empty()).then(|| (s.at_s - from_s, moved.join(", ")))
        })
}

/// Re-drives counted between the samples nearest `from_s` and `to_s`.
pub fn redrives_between(samples: &[HealthSample], from_s: f64, to_s: f64) -> Option<u64> {
    let first = counter_at(samples, REDRIVES, from_s).unwrap_or(0);
    let last = counter_at(samples, REDRIVES, to_s)?;
    Some(last.saturating_sub(first))
}

/// Seconds from `lifted_s` to the first sample (at or after it) that starts
/// [`RECOVERY_SAMPLES`] caught-up samples in a row; `None` when that never happened.
pub fn recovered_after(samples: &[HealthSample], lifted_s: f64) -> Option<f64> {
    let mut run_start: Option<f64> = None;
    let mut run = 0;
    for sample in samples.iter().filter(|s| s.at_s >= lifted_s) {
        if sample.health.is_some_and(|h| h.caught_up()) {
            run_start.get_or_insert(sample.at_s);
            run += 1;
            if run >= RECOVERY_SAMPLES {
                return run_start.map(|at| at - lifted_s);
            }
        } else {
            run_start = None;
            run = 0;
        }
    }
    None
}

/// The worst of each figure over the samples taken in `from_s..=to_s`, and how many samples
/// in that window could not be taken.
pub fn worst_between(samples: &[HealthSample], from_s: f64, to_s: f64) -> (Option<Health>, usize) {
    let window = samples.iter().filter(|s| (from_s..=to_s).contains(&s.at_s));
    let mut worst: Option<Health> = None;
    let mut missing = 0;
    for sample in window {
        match sample.health {
            Some(h) => worst = Some(worst.map_or(h, |w| w.max(h))),
            None => missing += 1,
        }
    }
    (worst, missing)
}

/// The report's fault records and the `faults` check.
pub fn records(
    executed: &[InjectedFault],
    samples: &[HealthSample],
    load: &LoadFigures<'_>,
) -> (Vec<FaultRecord>, Check) {
    let mut records = Vec::with_capacity(executed.len());
    let mut worst_recovery: Option<f64> = None;
    let mut problems = Vec::new();
    for (i, e) in executed.iter().enumerate() {
        let recovered = e
            .lifted_s
            .and_then(|lifted| recovered_after(samples, lifted));
        let next_injected = executed.get(i + 1).map(|next| next.injected_s);
        let mut note = e.actions.join("; ");
        if let Some(error) = &e.error {
            note.push_str(&format!("; FAILED: {error}"));
            problems.push(format!("{} {} failed", e.kind.name(), e.target));
        }
        let window_end = e
            .lifted_s
            .map_or(f64::INFINITY, |l| l + recovered.unwrap_or(0.0));
        let (worst, missing) = worst_between(samples, e.injected_s, window_end);
        if let Some(w) = worst {
            note.push_str(&format!(
                "; until caught up: outbox ≤ {}, consumer backlog ≤ {}, oldest unfinished order {:.1} s",
                w.outbox, w.consumer_backlog, w.oldest_unfinished_s
            ));
        }
        if missing > 0 {
            note.push_str(&format!(" ({missing} probe samples unavailable)"));
        }
        if let (Some(lifted), Some(r), Some(next)) = (e.lifted_s, recovered, next_injected) {
            if lifted + r > next {
                note.push_str(
                    "; the next fault began before the system had caught up, so this time includes it",
                );
            }
        }
        if e.kind == FaultKind::SlowClients {
            let (figures, problem) =
                judge_window(e, load.stats, load.p95_threshold_ms, load.max_error_rate);
            note.push_str(&format!("; {figures}"));
            if let Some(problem) = problem {
                problems.push(format!("{} {}: {problem}", e.kind.name(), e.target));
            }
        }
        if e.failovers > 0 {
            note.push_str(&format!(
                "; {} requests refused by a dead replica were sent to another one",
                e.failovers
            ));
        }
        match (e.lifted_s, recovered) {
            (Some(_), Some(r)) => worst_recovery = Some(worst_recovery.map_or(r, |w| w.max(r))),
            (Some(_), None) => {
                problems.push(format!("{} {} never caught up", e.kind.name(), e.target))
            }
            (None, _) => {}
        }
        let noticed = noticed_between(samples, e.injected_s, window_end);
        if let Some((_, what)) = &noticed {
            note.push_str(&format!("; noticed: {what}"));
        }
        let redrives = e
            .lifted_s
            .and_then(|_| redrives_between(samples, e.injected_s, window_end));
        records.push(FaultRecord {
            at_s: e.injected_s,
            kind: e.kind.name().to_string(),
            target: e.target.clone(),
            recovered_after_s: recovered,
            noticed_after_s: noticed.map(|(after, _)| after),
            redrives,
            note,
        });
    }
    let passed = problems.is_empty() && !executed.is_empty();
    let detail = if passed {
        format!(
            "{} faults injected and lifted; caught up after each within {:.1} s (outbox ≤ {RECOVERY_MAX_OUTBOX}, consumer backlog ≤ {RECOVERY_MAX_CONSUMER_BACKLOG}, no unfinished order older than {RECOVERY_MAX_OLDEST_UNFINISHED_S} s, {RECOVERY_SAMPLES} samples in a row)",
            executed.len(),
            worst_recovery.unwrap_or(0.0)
        )
    } else if executed.is_empty() {
        "no fault was executed".to_string()
    } else {
        problems.join("; ")
    };
    (records, Check::new(CHECK_FAULTS, passed, detail))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn sample(at_s: f64, outbox: i64, backlog: u64, oldest: f64) -> HealthSample {
        HealthSample {
            at_s,
            health: Some(Health {
                outbox,
                consumer_backlog: backlog,
                oldest_unfinished_s: oldest,
            }),
            ..HealthSample::default()
        }
    }

    fn gap(at_s: f64) -> HealthSample {
        HealthSample {
            at_s,
            health: None,
            ..HealthSample::default()
        }
    }

    pub(in crate::chaos) fn executed(
        kind: FaultKind,
        injected: f64,
        lifted: Option<f64>,
    ) -> InjectedFault {
        InjectedFault {
            kind,
            target: "payment".into(),
            planned_at_s: injected,
            planned_duration_s: 2.0,
            injected_s: injected,
            lifted_s: lifted,
            actions: vec!["kill -9 payment-service (pid 7)".into()],
            error: lifted.is_none().then(|| "restart failed".to_string()),
            failovers: 3,
        }
    }

    #[test]
    fn recovery_is_the_start_of_the_first_caught_up_streak_after_the_lift() {
        let samples = vec![
            sample(10.0, 0, 0, 0.1), // before the fault: healthy
            gap(11.0),               // fault: nothing readable
            gap(12.0),
            sample(13.0, 9000, 0, 3.0), // lifted at 12.5: backlog
            sample(14.0, 100, 5000, 4.0),
            sample(15.0, 0, 10, 9.0), // an old order still unfinished
            sample(16.0, 0, 10, 0.5), // caught up …
            sample(17.0, 0, 10, 0.4),
            gap(18.0), // … but a missing sample breaks the streak
            sample(19.0, 0, 0, 0.2),
            sample(20.0, 0, 0, 0.2),
            sample(21.0, 0, 0, 0.2),
            sample(22.0, 0, 0, 0.2),
        ];
        assert_eq!(recovered_after(&samples, 12.5), Some(19.0 - 12.5));
        // Lifted when everything was already fine: recovered at the first sample.
        assert_eq!(recovered_after(&samples, 19.0), Some(0.0));
        // Not enough caught-up samples after the lift.
        assert_eq!(recovered_after(&samples, 20.5), None);
        assert_eq!(recovered_after(&[], 0.0), None);
    }

    #[test]
    fn recovery_thresholds_are_inclusive() {
        let at_limit = |at| {
            sample(
                at,
                RECOVERY_MAX_OUTBOX,
                RECOVERY_MAX_CONSUMER_BACKLOG,
                RECOVERY_MAX_OLDEST_UNFINISHED_S,
            )
        };
        let samples: Vec<_> = (0..RECOVERY_SAMPLES).map(|i| at_limit(i as f64)).collect();
        assert_eq!(recovered_after(&samples, 0.0), Some(0.0));
        let over: Vec<_> = (0..5)
            .map(|i| sample(i as f64, RECOVERY_MAX_OUTBOX + 1, 0, 0.0))
            .collect();
        assert_eq!(recovered_after(&over, 0.0), None);
    }

    #[test]
    fn worst_figures_and_missing_samples_in_a_window() {
        let samples = vec![
            sample(1.0, 5, 1, 0.1),
            sample(2.0, 700, 20, 2.0),
            gap(3.0),
            sample(4.0, 10, 900, 7.5),
            sample(9.0, 99_999, 99_999, 99.0),
        ];
        let (worst, missing) = worst_between(&samples, 1.5, 4.0);
        assert_eq!(
            worst,
            Some(Health {
                outbox: 700,
                consumer_backlog: 900,
                oldest_unfinished_s: 7.5
            })
        );
        assert_eq!(missing, 1);
    }

    #[test]
    fn records_and_check_summarise_every_fault() {
        let samples: Vec<_> = (0..40)
            .map(|s| {
                let s = s as f64;
                if (10.0..20.0).contains(&s) {
                    sample(s, 2000, 0, 8.0)
                } else {
                    sample(s, 0, 0, 0.1)
                }
            })
            .collect();
        let stats = crate::loadgen::stats::RunStats::new(40);
        let load = LoadFigures {
            stats: &stats,
            p95_threshold_ms: 2000.0,
            max_error_rate: 0.0,
        };
        let ok = [executed(FaultKind::Kill, 8.0, Some(12.0))];
        let (recorded, check) = records(&ok, &samples, &load);
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].kind, "kill");
        assert_eq!(recorded[0].recovered_after_s, Some(8.0));
        assert!(
            recorded[0].note.contains("outbox ≤ 2000"),
            "{}",
            recorded[0].note
        );
        assert!(
            recorded[0].note.contains("3 requests refused"),
            "{}",
            recorded[0].note
        );
        assert!(check.passed, "{}", check.detail);
        assert_eq!(check.name, CHECK_FAULTS);

        let failed = [
            executed(FaultKind::Kill, 8.0, Some(12.0)),
            executed(FaultKind::StopPostgres, 25.0, None),
        ];
        let (recorded, check) = records(&failed, &samples, &load);
        assert_eq!(recorded[1].recovered_after_s, None);
        assert!(recorded[1].note.contains("FAILED: restart failed"));
        assert!(!check.passed);
        assert!(
            check.detail.contains("stop-postgres payment failed"),
            "{}",
            check.detail
        );

        let overlapping = [
            executed(FaultKind::Kill, 8.0, Some(12.0)),
            executed(FaultKind::KillNats, 15.0, Some(17.0)),
        ];
        let (recorded, _) = records(&overlapping, &samples, &load);
        assert!(
            recorded[0].note.contains("includes it"),
            "{}",
            recorded[0].note
        );
        assert!(
            !recorded[1].note.contains("includes it"),
            "{}",
            recorded[1].note
        );

        let never = [executed(FaultKind::Pause, 30.0, Some(39.5))];
        let (_, check) = records(&never, &samples, &load);
        assert!(!check.passed);
        assert!(check.detail.contains("never caught up"), "{}", check.detail);

        let (_, check) = records(&[], &samples, &load);
        assert!(!check.passed);

        // Slow clients are judged by the load's own requests in their window: none ran.
        let slow = [executed(FaultKind::SlowClients, 8.0, Some(12.0))];
        let (recorded, check) = records(&slow, &samples, &load);
        assert!(!check.passed);
        assert!(check.detail.contains("no load ran"), "{}", check.detail);
        assert!(
            recorded[0]
                .note
                .contains("the load's own buyers during the fault"),
            "{}",
            recorded[0].note
        );
    }

    #[test]
    fn noticing_and_redrives_are_read_from_the_samples() {
        let mut samples: Vec<HealthSample> = (0..10).map(|s| sample(s as f64, 0, 0, 0.0)).collect();
        samples[4].not_ready = vec![("inventory-service".into(), "consumer gone".into())];
        samples[8].not_ready = vec![("order-service".into(), "later".into())];
        for (s, redrives) in [(1, 5), (3, 5), (6, 40), (9, 41)] {
            samples[s].counters.insert(REDRIVES.into(), redrives);
        }
        assert_eq!(
            noticed_between(&samples, 2.0, 4.5),
            Some((
                2.0,
                "/ready 503 from inventory-service: consumer gone".to_string()
            ))
        );
        assert_eq!(
            noticed_between(&samples, 5.0, 7.0),
            Some((1.0, "orders_redriven_total +35".to_string())),
            "a counter that moved is noticing too"
        );
        assert_eq!(noticed_between(&samples, 6.5, 7.5), None);
        samples[7].unreachable = vec!["payment-service".into()];
        assert_eq!(
            noticed_between(&samples, 6.5, 7.5),
            Some((
                0.5,
                "/ready did not answer from payment-service".to_string()
            ))
        );
        assert_eq!(redrives_between(&samples, 2.0, 7.0), Some(35));
        assert_eq!(redrives_between(&samples, 0.0, 0.5), None);
    }
}
