//! The router's Prometheus metrics.

use prometheus::{CounterVec, HistogramVec, IntCounterVec, IntGaugeVec};

/// The router's metrics (registered by the node with the others).
#[derive(Clone)]
pub struct RouterMetrics {
    /// Attempts by model, provider and outcome.
    pub attempts: IntCounterVec,
    pub tokens: IntCounterVec,
    pub cost_usd: CounterVec,
    /// `first_choice`, `fallback`, `retry`, `no_candidate`, `budget_refused`.
    pub decisions: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    /// Answers the cascade held back, by model and reason (`low_confidence`, `truncated`).
    pub escalations: IntCounterVec,
    /// Time in Revo, excluding the provider, per request.
    pub overhead: HistogramVec,
}

impl RouterMetrics {
    pub fn new() -> prometheus::Result<RouterMetrics> {
        use prometheus::{HistogramOpts, Opts};
        Ok(RouterMetrics {
            attempts: IntCounterVec::new(
                Opts::new(
                    "revo_router_attempts_total",
                    "Attempts by catalogue model, provider and outcome (`completed`, `failed`, `cancelled`)",
                ),
                &["model", "provider", "outcome"],
            )?,
            tokens: IntCounterVec::new(
                Opts::new(
                    "revo_router_tokens_total",
                    "Billed tokens by model, provider and kind (input, cache_read, cache_write, output, reasoning)",
                ),
                &["model", "provider", "kind"],
            )?,
            cost_usd: CounterVec::new(
                Opts::new(
                    "revo_router_cost_usd_total",
                    "Spend by model and provider (for dashboards; the ledger holds the exact figure)",
                ),
                &["model", "provider"],
            )?,
            decisions: IntCounterVec::new(
                Opts::new(
                    "revo_router_decisions_total",
                    "Router decisions: first_choice, fallback, retry, no_candidate, budget_refused",
                ),
                &["decision"],
            )?,
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "revo_router_breaker_state",
                    "Circuit breaker per model: 0 closed, 1 half-open, 2 open",
                ),
                &["model"],
            )?,
            escalations: IntCounterVec::new(
                Opts::new(
                    "revo_router_cascade_escalations_total",
                    "Local answers the cascade held back and escalated, by model and reason (low_confidence, truncated)",
                ),
                &["model", "reason"],
            )?,
            overhead: HistogramVec::new(
                HistogramOpts::new(
                    "revo_gateway_overhead_seconds",
                    "Time a routed request spent in Revo, excluding the provider, by provider",
                )
                .buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
                ]),
                &["provider"],
            )?,
        })
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.attempts.clone()),
            Box::new(self.tokens.clone()),
            Box::new(self.cost_usd.clone()),
            Box::new(self.decisions.clone()),
            Box::new(self.breaker_state.clone()),
            Box::new(self.escalations.clone()),
            Box::new(self.overhead.clone()),
        ]
    }
}
