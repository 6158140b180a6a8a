//! Capacity mode (`loadtest capacity`): step the arrival rate up until the system stops keeping
//! up, stop the load there, drain, audit, and report the highest step sustained with every check
//! passing — next to the naive baseline measured on the same PostgreSQL.
//!
//! The plan (`scenarios/capacity/*.toml`) is an ordinary scenario plus a `[capacity]` section
//! ([`CapacitySettings`]), from which its stages are generated. This module is the controller and
//! what the mode adds to the session's run; the rules are in [`rules`].
//!
//! While the load runs, a controller samples the end-to-end backlog once a second (orders not yet
//! final, through the partial index, and messages waiting in the outboxes and JetStream
//! consumers) and judges each step `evaluation_delay` after it ends, so its last requests have
//! answered ([`rules::judge`]). A step is **saturated** — it did not keep up — when
//!
//! - more than `max_dropped` of its scheduled requests were dropped (no free connection),
//! - more than 1 % of its requests were still unanswered at the evaluation,
//! - its HTTP error rate is over the scenario's `checks.max_error_rate`, or
//! - the end-to-end backlog grew: the least-squares trend of the non-final orders sampled after
//!   `settle` rose by more than `max(min_backlog_growth, max_backlog_growth × the requests that
//!   arrived meanwhile)`. (The message backlog is reported too, not judged: each of its messages
//!   belongs to an order that is not final yet, so the orders' trend holds it, with less noise.)
//!
//! A step that kept up but whose HTTP p99 was over `http_p99_ms` in more than one latency window
//! is **slow**; one that kept up and was fast is **sustained**. The first saturated step stops
//! the load at once (the next step is cut short); a slow one does not. The report names the
//! highest step kept up (the throughput) and the highest sustained step (the unbroken run of
//! fast steps from the first). The run then drains and audits all three databases exactly like
//! `loadtest run`; the HTTP checks of the audit cover the sustained steps. Completed orders per
//! second come from `orders.finalized_at`.

pub mod figures;
pub mod rules;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use tokio::time::{Instant, MissedTickBehavior};

use crate::deploy;
use crate::loadgen::stats::RunStats;
use crate::loadgen::LoadState;
use crate::observe::baseline;
use crate::observe::database::{self, Scope};
use crate::observe::monitor::ProcessUsage;
use crate::observe::{procfs, SystemProbe};
use crate::plan::capacity::{stages_until, CapacitySettings};
use crate::plan::schedule::Schedule;
use crate::plan::{duration, RunPlan};
use crate::report::{CapacitySummary, Report, StepFigures, Verdict};
use crate::session::{self, DuringLoad, Finished, Mode, SessionOptions};
use figures::{
    completions_in, completions_per_second, processes_in_window, step_cost, step_figures,
    BacklogSample, Finalized,
};
use rules::{highest_kept_up, highest_sustained, judge, limits, Limits};

fn opt_ms(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.1}"))
}

/// How long one backlog sample may take before it is skipped.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a capacity plan end to end; returns whether every check passed.
pub async fn run(plan: &RunPlan, options: &SessionOptions, skip_baseline: bool) -> Result<bool> {
    let Some(settings) = plan.capacity.clone() else {
        anyhow::bail!("not a capacity plan: it has no [capacity] section");
    };
    let mode = CapacityMode {
        settings,
        skip_baseline,
        machine_cpu_before_pct: Mutex::new(None),
    };
    let report = session::execute(plan, options, &mode).await?;
    Ok(report.passed())
}

/// The capacity controller and its additions to the report.
struct CapacityMode {
    settings: CapacitySettings,
    skip_baseline: bool,
    /// CPU of the machine before the load (services idle).
    machine_cpu_before_pct: Mutex<Option<f64>>,
}

impl Mode for CapacityMode {
    type Outcome = ControlOutcome;

    fn monitor_scope(&self) -> Scope {
        // No scan of the whole orders table each second: it would take CPU from the system
        // a capacity run measures.
        Scope::OpenOrders
    }

    async fn before_load(&self, _plan: &RunPlan) {
        let rates = self.settings.step_rates();
        println!(
            "▶ capacity: {} steps of {} from {:.0} to {:.0} req/s (+{:.0}); the first step that does not keep up stops the load (a slow one does not)",
            rates.len(),
            duration::format(self.settings.step_duration),
            rates[0],
            rates[rates.len() - 1],
            self.settings.step_rate
        );
        let pct = machine_cpu_before_load().await;
        *self
            .machine_cpu_before_pct
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = pct;
    }

    async fn during_load(&self, during: DuringLoad<'_>) -> ControlOutcome {
        let rates = self.settings.step_rates();
        Controller {
            settings: &self.settings,
            limits: limits(&self.settings, during.plan.scenario.checks.max_error_rate),
            rates: &rates,
            schedule: &during.plan.schedule,
            load: during.load.clone(),
            probe: during.probe,
            start: during.start,
        }
        .run()
        .await
    }

    /// The HTTP checks of the audit cover the sustained steps; the data checks cover everything.
    fn http_window(&self, outcome: &ControlOutcome) -> Option<Range<u64>> {
        let sustained_end = highest_sustained(&outcome.steps).map(|s| s.to_s as u64);
        Some(0..sustained_end.unwrap_or(u64::MAX))
    }

    /// The schedule cut where the load stopped.
    fn schedule_ran(&self, plan: &RunPlan, outcome: &ControlOutcome) -> Schedule {
        let load = &plan.scenario.load;
        match outcome.stopped_at {
            Some(at) => Schedule::new(
                load.start_rate,
                &stages_until(load.start_rate, &load.stages, at),
            ),
            None => plan.schedule.clone(),
        }
    }

    async fn finish(
        &self,
        finished: Finished<'_>,
        outcome: ControlOutcome,
        report: &mut Report,
    ) -> Result<()> {
        let settings = &self.settings;
        let durability = format!(
            "{}; {}",
            database::durability(finished.dbs).await,
            deploy::nats_durability(finished.state)
        );
        let finalized_rows = database::finalized_orders(finished.dbs).await?;

        // The baseline on a quiet server: only PostgreSQL and NATS still run.
        deploy::stop_services(finished.state).await?;
        let (baseline, baseline_error) = if self.skip_baseline {
            (None, Some("skipped (--skip-baseline)".to_string()))
        } else {
            println!(
                "▶ naive baseline on the same PostgreSQL ({} s per level)…",
                settings.baseline_duration.as_secs_f64()
            );
            match baseline::measure(&finished.infra.admin_database_url, &settings.baseline()).await
            {
                Ok(report) => (Some(report), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            }
        };

        let finalized: Vec<Finalized> = finalized_rows
            .iter()
            .map(|(created, done, completed)| Finalized {
                at_s: seconds_between(finished.start_utc, *done),
                e2e_ms: seconds_between(*created, *done) * 1000.0,
                completed: *completed,
            })
            .collect();
        let ran = outcome.stopped_at;
        let mut capacity = summarise(
            settings,
            &finished.plan.schedule,
            outcome,
            finished.stats,
            &report.processes,
            &finalized,
        );
        capacity.baseline = baseline;
        capacity.baseline_error = baseline_error;
        capacity.durability = durability;
        capacity.machine_cpu_before_pct = *self
            .machine_cpu_before_pct
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        capacity.fill_ratio();
        report.checks.push(capacity.check());

        // The open-orders samples count only non-final orders: the final ones come from
        // finalized_at, cumulatively, like the scenario report's chart.
        let ran = ran.unwrap_or(finished.plan.schedule.total_duration());
        let last_sample = report
            .per_second
            .iter()
            .rev()
            .find(|row| row.orders_pending.is_some())
            .map_or(0, |row| row.second);
        let last_second = last_sample.max(ran.as_secs());
        report.per_second.retain(|row| row.second <= last_second);
        let (mut completed, mut failed) = (0u64, 0u64);
        let mut by_second: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for order in &finalized {
            let entry = by_second.entry(order.at_s.max(0.0) as u64).or_default();
            if order.completed {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
        let mut counts = by_second.into_iter().peekable();
        for row in &mut report.per_second {
            while let Some((_, (c, f))) = counts.next_if(|(second, _)| *second <= row.second) {
                completed += c;
                failed += f;
            }
            row.orders_completed = Some(completed);
            row.orders_failed = Some(failed);
        }
        report.capacity = Some(capacity);
        Ok(())
    }
}

/// Builds the summary from the judged steps and what the run recorded.
fn summarise(
    settings: &CapacitySettings,
    schedule: &Schedule,
    control: ControlOutcome,
    stats: &RunStats,
    processes: &[ProcessUsage],
    finalized: &[Finalized],
) -> CapacitySummary {
    let mut steps = control.steps;
    // The step the stop cut short, from the final statistics.
    if let Some(stopped) = control.stopped_at {
        let index = steps.len();
        let (from, to) = settings.step_window(index);
        if stopped > from && index < settings.step_rates().len() {
            let to = to.min(stopped);
            let mut cut = step_figures(
                index,
                settings.step_rates()[index],
                from,
                to,
                schedule,
                stats,
                &[],
                settings,
            );
            cut.backlog_growth = None;
            cut.verdict = Verdict::CutShort;
            steps.push(cut);
        }
    }
    for step in &mut steps {
        let (count, per_second, p50, p99) = completions_in(finalized, step.from_s, step.to_s);
        step.completed = count;
        step.completed_per_s = per_second;
        step.e2e_p50_ms = p50;
        step.e2e_p99_ms = p99;
        step.processes =
            processes_in_window(processes, step.from_s as u64, step.to_s.ceil() as u64);
        let tracked: f64 = step.processes.iter().map(|p| p.cpu_pct).sum();
        step.other_cpu_pct = step.machine_cpu_pct.map(|all| (all - tracked).max(0.0));
        // A cut-short step lasted about a second and completed its predecessor's backlog: its
        // cost per order would mean nothing.
        if step.verdict != Verdict::CutShort {
            step.cost = Some(step_cost(step));
        }
    }
    let sustained = highest_sustained(&steps).cloned();
    let kept_up = highest_kept_up(&steps).cloned();
    let saturated = steps
        .iter()
        .find(|s| s.verdict == Verdict::Saturated)
        .cloned();
    CapacitySummary {
        settings: Some(settings.clone()),
        sustained_rps: sustained.as_ref().map(|s| s.target_rps),
        sustained_completed_per_s: sustained.as_ref().map(|s| s.completed_per_s),
        kept_up_rps: kept_up.as_ref().map(|s| s.target_rps),
        kept_up_completed_per_s: kept_up.as_ref().map(|s| s.completed_per_s),
        saturated_rps: saturated.as_ref().map(|s| s.target_rps),
        saturation_reasons: saturated.map(|s| s.reasons).unwrap_or_default(),
        stopped_at_s: control.stopped_at.map(|d| d.as_secs_f64()),
        completed_per_second: completions_per_second(finalized),
        steps,
        ..CapacitySummary::default()
    }
}

/// What the controller saw.
struct ControlOutcome {
    steps: Vec<StepFigures>,
    /// When the load was stopped early (after the start).
    stopped_at: Option<Duration>,
}

/// Samples the backlog once a second and judges each step after it ends.
struct Controller<'a> {
    settings: &'a CapacitySettings,
    limits: Limits,
    rates: &'a [f64],
    schedule: &'a Schedule,
    load: Arc<LoadState>,
    probe: &'a SystemProbe,
    start: Instant,
}

impl Controller<'_> {
    async fn run(self) -> ControlOutcome {
        let mut samples: Vec<BacklogSample> = Vec::new();
        let mut steps = Vec::new();
        let mut ticks = tokio::time::interval_at(self.start, Duration::from_secs(1));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let tick = ticks.tick().await;
            if let Some(sample) = self.sample((tick - self.start).as_secs_f64()).await {
                samples.push(sample);
            }
            let index = steps.len();
            let (from, to) = self.settings.step_window(index);
            if self.start.elapsed() < to + self.settings.evaluation_delay {
                continue;
            }
            let mut step = {
                let stats = self.load.stats.lock().unwrap_or_else(|e| e.into_inner());
                step_figures(
                    index,
                    self.rates[index],
                    from,
                    to,
                    self.schedule,
                    &stats,
                    &samples,
                    self.settings,
                )
            };
            (step.verdict, step.reasons) = judge(&step, &self.limits);
            println!(
                "  step {:>2}: {:>6.0} req/s → achieved {:.0}/s, HTTP p99 {} ms, dropped {}, backlog {} → {}{}",
                step.step,
                step.target_rps,
                step.achieved_rps,
                opt_ms(step.http_p99_ms),
                step.dropped,
                step.backlog_growth
                    .map_or("-".to_string(), |g| format!("{g:+.0}")),
                step.verdict.label(),
                if step.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", step.reasons.join("; "))
                }
            );
            let saturated = step.verdict == Verdict::Saturated;
            steps.push(step);
            if saturated {
                self.load.cancel.store(true, Ordering::Relaxed);
                return ControlOutcome {
                    steps,
                    stopped_at: Some(self.start.elapsed()),
                };
            }
            if steps.len() == self.rates.len() {
                return ControlOutcome {
                    steps,
                    stopped_at: None,
                };
            }
        }
    }

    async fn sample(&self, at_s: f64) -> Option<BacklogSample> {
        let state = tokio::time::timeout(SAMPLE_TIMEOUT, self.probe.state(Scope::OpenOrders))
            .await
            .ok()?;
        let progress = state.progress?;
        let messages = state
            .backlog
            .map(|b| progress.outbox_backlog + b.messages() as i64);
        Some(BacklogSample {
            at_s,
            non_final_orders: progress.non_final_orders,
            messages,
            cpu_busy_s: procfs::machine_busy_seconds(),
        })
    }
}

/// CPU the machine uses over 2 s, % of one core; warns when other programs are busy.
async fn machine_cpu_before_load() -> Option<f64> {
    let before = procfs::machine_busy_seconds()?;
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pct = (procfs::machine_busy_seconds()? - before) / began.elapsed().as_secs_f64() * 100.0;
    if pct > 25.0 {
        println!(
            "  warning: the machine used {pct:.0} % of a core before the load (services idle): \
             other programs compete with the run, so its figures come out low"
        );
    }
    Some(pct)
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from)
        .num_microseconds()
        .map_or(f64::NAN, |us| us as f64 / 1e6)
}
