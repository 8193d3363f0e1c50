//! Every Prometheus metric Revo exports, named and described in this one module.
//! Labels have bounded cardinality (projection names, never user ids).

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use revo_actors::{ProjectorMetrics, RelayMetrics};

use crate::db::{CommitMetrics, StoreMetrics};

pub struct Metrics {
    pub registry: Registry,
    pub store: StoreMetrics,
    pub relay: RelayMetrics,
    pub projection_lag: IntGaugeVec,
    pub http: HttpMetrics,
    pub generation: GenerationMetrics,
    pub router: revo_actors::router::RouterMetrics,
    pub realtime: revo_actors::rooms::RealtimeMetrics,
    pub workflows: revo_actors::workflows::WorkflowMetrics,
    /// Restarts of supervised actors, by actor name (static names and registry model names).
    pub actor_restarts: IntCounterVec,
    /// Live model workers and their load, by model (from the workers' heartbeats; set at each
    /// scrape, so every edge reports the whole cluster's workers).
    pub model_workers: IntGaugeVec,
    pub model_queue_depth: IntGaugeVec,
    pub model_active: IntGaugeVec,
    /// Audit records lost because the writer's queue was full.
    pub audit_lost: IntCounter,
}

/// Generations answered by this edge, by local model (registry names only).
#[derive(Clone)]
pub struct GenerationMetrics {
    pub finished: IntCounterVec,
    pub tokens: IntCounterVec,
    pub time_to_first_token: HistogramVec,
}

impl GenerationMetrics {
    fn new() -> prometheus::Result<Self> {
        Ok(GenerationMetrics {
            finished: IntCounterVec::new(
                Opts::new(
                    "revo_generations_total",
                    "Generations by model and outcome (`stop`, `length`, or an error code)",
                ),
                &["model", "outcome"],
            )?,
            tokens: IntCounterVec::new(
                Opts::new(
                    "revo_generation_tokens_total",
                    "Tokens of completed generations by model and kind (`prompt`, `completion`)",
                ),
                &["model", "kind"],
            )?,
            time_to_first_token: HistogramVec::new(
                HistogramOpts::new(
                    "revo_generation_time_to_first_token_seconds",
                    "From a request's arrival at the model to its first text, by model",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["model"],
            )?,
        })
    }

    /// Counts a completed generation.
    pub fn completed(&self, model: &str, o: &revo_actors::model_thread::Outcome) {
        let finish = revo_actors::model_worker::wire::finish_reason(o.finish);
        self.finished.with_label_values(&[model, finish]).inc();
        let t = &self.tokens;
        t.with_label_values(&[model, "prompt"])
            .inc_by(o.prompt_tokens as u64);
        t.with_label_values(&[model, "completion"])
            .inc_by(o.completion_tokens as u64);
        self.time_to_first_token
            .with_label_values(&[model])
            .observe(o.time_to_first_token_ms as f64 / 1e3);
    }

    /// Counts a failed generation by its error code.
    pub fn failed(&self, model: &str, code: &str) {
        self.finished.with_label_values(&[model, code]).inc();
    }
}

/// The edge's request metrics. Routes are templates (`/users/{id}`), never raw paths.
#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub in_flight: IntGauge,
    pub auth_failures: IntCounterVec,
    pub rate_limited: IntCounterVec,
}

impl HttpMetrics {
    fn new() -> prometheus::Result<Self> {
        Ok(HttpMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "revo_http_requests_total",
                    "HTTP requests by method, route template and status",
                ),
                &["method", "route", "status"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "revo_http_request_duration_seconds",
                    "HTTP request latency by method and route template",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 10.0,
                ]),
                &["method", "route"],
            )?,
            in_flight: IntGauge::new(
                "revo_http_requests_in_flight",
                "HTTP requests being handled now",
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "revo_auth_failures_total",
                    "Refused credentials and permissions, by reason (the error code)",
                ),
                &["reason"],
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "revo_rate_limit_rejections_total",
                    "Requests refused with 429, by bucket kind (user, key, login)",
                ),
                &["kind"],
            )?,
        })
    }
}

/// The method label: the standard methods by name, anything else as `OTHER`, so a client
/// cannot mint new series by inventing methods.
pub fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> prometheus::Result<Histogram> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let commit = CommitMetrics {
            append_seconds: histogram(
                "revo_event_append_seconds",
                "Time from an append call to its outcome (group commit included)",
                vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            )?,
            batch_events: histogram(
                "revo_event_commit_batch_events",
                "Events committed per group-commit transaction",
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
                ],
            )?,
        };
        let store = StoreMetrics {
            commit,
            held_back_seconds: Gauge::new(
                "revo_store_held_back_seconds",
                "How long committed events have waited, unseen by readers, behind an older \
                 open Postgres transaction (0 when none)",
            )?,
        };
        let relay = RelayMetrics {
            lag_events: IntGauge::new(
                "revo_relay_lag_events",
                "Committed events not yet published (estimate while appends are in flight)",
            )?,
            lag_seconds: Gauge::new(
                "revo_relay_lag_seconds",
                "Age of the newest published event while a backlog remains; 0 when caught up",
            )?,
            published: IntCounter::new(
                "revo_relay_published_total",
                "Events published by the relay",
            )?,
            publish_errors: IntCounter::new(
                "revo_relay_publish_errors_total",
                "Failed relay publish rounds (bus down, stream missing, encode failure)",
            )?,
            leader: IntGauge::new(
                "revo_relay_leader",
                "1 while this node runs the active relay",
            )?,
        };
        let projection_lag = IntGaugeVec::new(
            Opts::new(
                "revo_projection_lag_events",
                "Committed events not yet folded, per projection",
            ),
            &["projection"],
        )?;
        let http = HttpMetrics::new()?;
        let generation = GenerationMetrics::new()?;
        let router = revo_actors::router::RouterMetrics::new()?;
        let realtime = revo_actors::rooms::RealtimeMetrics::new()?;
        let workflows = revo_actors::workflows::WorkflowMetrics::new()?;
        let registry = Registry::new();
        let actor_restarts = IntCounterVec::new(
            Opts::new(
                "revo_actor_restarts_total",
                "Restarts of supervised actors after a failure or panic, by actor",
            ),
            &["actor"],
        )?;
        let model_workers = IntGaugeVec::new(
            Opts::new(
                "revo_model_workers",
                "Live workers serving each local model (heard from within the worker timeout)",
            ),
            &["model"],
        )?;
        let model_queue_depth = IntGaugeVec::new(
            Opts::new(
                "revo_model_queue_depth",
                "Requests waiting in the queues of each local model's live workers",
            ),
            &["model"],
        )?;
        let model_active = IntGaugeVec::new(
            Opts::new(
                "revo_model_active_sequences",
                "Sequences being decoded by each local model's live workers",
            ),
            &["model"],
        )?;
        let audit_lost = IntCounter::new(
            "revo_audit_lost_total",
            "Audit records lost because the audit writer's queue was full",
        )?;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(model_workers.clone()),
            Box::new(model_queue_depth.clone()),
            Box::new(model_active.clone()),
            Box::new(store.commit.append_seconds.clone()),
            Box::new(store.commit.batch_events.clone()),
            Box::new(relay.lag_events.clone()),
            Box::new(relay.lag_seconds.clone()),
            Box::new(relay.published.clone()),
            Box::new(relay.publish_errors.clone()),
            Box::new(relay.leader.clone()),
            Box::new(projection_lag.clone()),
            Box::new(store.held_back_seconds.clone()),
            Box::new(actor_restarts.clone()),
            Box::new(http.requests.clone()),
            Box::new(http.duration.clone()),
            Box::new(http.in_flight.clone()),
            Box::new(http.auth_failures.clone()),
            Box::new(http.rate_limited.clone()),
            Box::new(generation.finished.clone()),
            Box::new(generation.tokens.clone()),
            Box::new(generation.time_to_first_token.clone()),
            Box::new(audit_lost.clone()),
        ];
        for c in collectors
            .into_iter()
            .chain(router.collectors())
            .chain(realtime.collectors())
            .chain(workflows.collectors())
        {
            registry.register(c)?;
        }
        Ok(Metrics {
            audit_lost,
            actor_restarts,
            model_workers,
            model_queue_depth,
            model_active,
            registry,
            store,
            relay,
            projection_lag,
            http,
            generation,
            router,
            realtime,
            workflows,
        })
    }

    pub fn projector(&self, projection: &str) -> ProjectorMetrics {
        ProjectorMetrics {
            lag_events: self.projection_lag.with_label_values(&[projection]),
        }
    }

    /// Sets the model gauges from a census (`Inference::census`); models gone since the last
    /// scrape disappear.
    pub fn observe_models(&self, census: &[(String, usize, usize, usize)]) {
        self.model_workers.reset();
        self.model_queue_depth.reset();
        self.model_active.reset();
        for (model, workers, queued, active) in census {
            let m = [model.as_str()];
            self.model_workers
                .with_label_values(&m)
                .set(*workers as i64);
            self.model_queue_depth
                .with_label_values(&m)
                .set(*queued as i64);
            self.model_active.with_label_values(&m).set(*active as i64);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_metrics_register_and_render() {
        let m = super::Metrics::new().unwrap();
        m.store.commit.append_seconds.observe(0.001);
        m.projector("nodes").lag_events.set(3);
        m.http
            .requests
            .with_label_values(&["GET", "/users/me", "200"])
            .inc();
        m.http
            .duration
            .with_label_values(&["GET", "/users/me"])
            .observe(0.001);
        m.http
            .auth_failures
            .with_label_values(&["token_expired"])
            .inc();
        m.http.rate_limited.with_label_values(&["user"]).inc();
        m.observe_models(&[("gone".into(), 1, 0, 0)]);
        m.observe_models(&[("smollm2".into(), 2, 5, 3)]);
        let text = m.render();
        assert!(
            text.contains("revo_model_workers{model=\"smollm2\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("revo_model_queue_depth{model=\"smollm2\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("revo_model_active_sequences{model=\"smollm2\"} 3"),
            "{text}"
        );
        assert!(
            !text.contains("gone"),
            "a model no longer announced stays out: {text}"
        );
        for name in [
            "revo_event_append_seconds",
            "revo_event_commit_batch_events",
            "revo_relay_lag_events",
            "revo_relay_lag_seconds",
            "revo_relay_publish_errors_total",
            "revo_projection_lag_events",
            "revo_http_requests_total",
            "revo_http_request_duration_seconds",
            "revo_http_requests_in_flight",
            "revo_auth_failures_total",
            "revo_rate_limit_rejections_total",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
