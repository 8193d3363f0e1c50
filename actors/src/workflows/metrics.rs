//! The workflow engine's metrics.

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

#[derive(Clone)]
pub struct WorkflowMetrics {
    /// Runs by state (every node reports the same fold of the log).
    pub runs: IntGaugeVec,
    /// Runs this node is executing.
    pub running_here: IntGauge,
    /// Step attempts' durations, by step type and outcome.
    pub step_seconds: HistogramVec,
    /// Step attempts that failed and were scheduled again, by step type.
    pub retries: IntCounterVec,
    /// Runs this node took over from a node found dead, or resumed after a restart.
    pub takeovers: IntCounter,
    /// `sleep` timers waiting to fire.
    pub timers_pending: IntGauge,
    /// Dollars spent by the runs in this node's view (no label per workflow: their number
    /// is the users' to choose; `GET /runs` has each run's cost exactly).
    pub cost: Gauge,
}

impl WorkflowMetrics {
    pub fn new() -> prometheus::Result<WorkflowMetrics> {
        Ok(WorkflowMetrics {
            runs: IntGaugeVec::new(
                Opts::new("revo_workflow_runs", "Workflow runs by state"),
                &["state"],
            )?,
            running_here: IntGauge::new(
                "revo_workflow_runs_executing",
                "Workflow runs this node is executing",
            )?,
            step_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "revo_workflow_step_seconds",
                    "Workflow step attempts' durations, by step type and outcome",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0,
                ]),
                &["type", "outcome"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "revo_workflow_step_retries_total",
                    "Workflow step attempts that failed and were scheduled again",
                ),
                &["type"],
            )?,
            takeovers: IntCounter::new(
                "revo_workflow_takeovers_total",
                "Runs this node took over from a dead node or resumed after a restart",
            )?,
            timers_pending: IntGauge::new(
                "revo_workflow_timers_pending",
                "Workflow sleep timers waiting to fire",
            )?,
            cost: Gauge::new(
                "revo_workflow_cost_usd",
                "Dollars spent by the workflow runs this node's view holds",
            )?,
        })
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.runs.clone()),
            Box::new(self.running_here.clone()),
            Box::new(self.step_seconds.clone()),
            Box::new(self.retries.clone()),
            Box::new(self.takeovers.clone()),
            Box::new(self.timers_pending.clone()),
            Box::new(self.cost.clone()),
        ]
    }
}
