//! Durable workflows (docs/workflows.md). A run is the stream `workflow_run/<id>`; its state
//! is the fold of that stream ([`RunState`]).
//!
//! - **One executor per run.** The node that creates a run claims it in the same append
//!   (`run.created` + `run.claimed`) and runs it as a run actor (`run/`) on this node. The
//!   actor writes at the exact version it folded; a write refused for a version conflict makes
//!   it read what it missed, and a `run.claimed` by another node there ends it (fenced). So a
//!   stale owner's write never lands.
//! - **Takeover.** `workflows.scan` looks at the active runs (the `workflow_runs` live view)
//!   every half second: a run whose owner is dead (silent on `<prefix>.sig.node.*` for the
//!   node timeout), this node from an earlier actor, or nobody, is claimed at the exact version
//!   and resumed. Completed steps are in the stream and never run again; a step that was
//!   running when its node died runs again as its next attempt.
//! - **Wake-ups.** Commands (cancel, approve, reject, retry) are appended by whichever edge
//!   takes the request, at the exact version of the stream it folded. The owner hears of them
//!   through `<prefix>.evt.workflow_run.<id>` (`workflows.events`), and polls every few
//!   seconds in case a message is lost.
//! - **Progress** goes out as `workflow.*` frames (`frames.rs`) to the run's user's WebSocket
//!   sessions subscribed to `workflow`, and generated text on `<prefix>.sig.run.<id>` for SSE.

pub mod definition;
mod frames;
pub mod http;
mod metrics;
mod run;
pub mod schema;
mod standing;
mod steps;
pub mod template;

pub use frames::{of_event as frame_of_event, progress as progress_frame};
pub use metrics::WorkflowMetrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use revo_events::family::workflow::{ParentRef, RunEvent, WorkflowRow, RUN_STREAM};
use revo_events::{
    AppendRequest, Directory, EventFamily, EventMeta, EventStore, ExpectedVersion,
    ModelsProjection, NewEvent, RecordedEvent, RunState, RunStatus, RunsProjection, StepStatus,
    StoreError, Usd, WorkflowsProjection,
};
use revo_nats::{Bus, Subjects};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::kit::{lock, mailbox, Context, Handle, Supervisor};
use crate::rooms::Hub;
use crate::router::Router;
use crate::LiveView;
use definition::{Definition, Problem};
use http::HttpPolicy;

#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub http: HttpPolicy,
    /// How often active runs are looked at for takeover.
    pub scan_every: Duration,
    /// Most runs one node executes at once; more wait for a node with room.
    pub max_runs_here: usize,
    /// An `http` step's timeout when it sets none.
    pub http_timeout: Duration,
    /// Longest event payload the store takes (outputs over it fail their step).
    pub max_payload: usize,
    /// Most unfinished runs one user may have (children not counted).
    pub max_active_runs_per_user: usize,
    /// Most workflows (not archived) one user may have.
    pub max_workflows_per_user: usize,
    /// Most run followers (`GET /runs/{id}/events`) one user holds on one edge.
    pub max_followers_per_user: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            http: HttpPolicy::default(),
            scan_every: Duration::from_millis(500),
            max_runs_here: 10_000,
            http_timeout: Duration::from_secs(30),
            max_payload: 1024 * 1024,
            max_active_runs_per_user: 1000,
            max_workflows_per_user: 1000,
            max_followers_per_user: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("no such run")]
    NotFound,
    /// The request does not fit the run's state: (code, message), `409`.
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("the input does not fit the workflow")]
    Invalid(Vec<Problem>),
    /// Over a limit: `429`.
    #[error("{1}")]
    Limited(&'static str, String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Unavailable(e.to_string())
    }
}

/// What a person decides about a run.
#[derive(Debug, Clone)]
pub enum Command {
    Cancel,
    Approve { comment: Option<String> },
    Reject { comment: Option<String> },
    Retry,
}

pub(crate) enum RunCmd {
    /// Something may have been appended by another writer: read it (`Some(v)`: an event at
    /// version `v` was published; the actor already has it if it wrote it).
    Wake(Option<i64>),
}

/// A run to start.
pub struct NewRun<'a> {
    pub workflow: &'a WorkflowRow,
    pub input: Value,
    pub user_id: Uuid,
    pub key_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    pub meta: EventMeta,
    pub parent: Option<ParentRef>,
    /// For a child run: the child this one replaces (the step's earlier child, which failed
    /// and can never pass: a retried step starts a new one). A repeat of the same start (a
    /// takeover) derives the same id, so it finds the child it started.
    pub replaces: Option<Uuid>,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn EventStore>,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    router: Router,
    hub: Hub,
    models: LiveView<ModelsProjection>,
    runs: LiveView<RunsProjection>,
    workflows: LiveView<WorkflowsProjection>,
    /// Users and keys: a run stops once its owner is disabled or its key revoked or expired.
    directory: LiveView<Directory>,
    node: String,
    settings: EngineSettings,
    metrics: WorkflowMetrics,
    local: Mutex<HashMap<Uuid, Handle<RunCmd>>>,
    /// Followers of single runs (`GET /runs/{id}/events`): the latest version heard of.
    watchers: Mutex<HashMap<Uuid, tokio::sync::watch::Sender<i64>>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// A recorded envelope for events this process just appended at `first_version` onwards.
pub(crate) fn recorded(run: Uuid, first_version: i64, events: &[NewEvent]) -> Vec<RecordedEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| RecordedEvent {
            position: 0,
            envelope: revo_events::Envelope {
                event_id: e.event_id,
                stream_type: RUN_STREAM.into(),
                stream_id: run.to_string(),
                version: first_version + i as i64,
                event_type: e.event_type.clone(),
                schema: e.schema,
                occurred_at: e.occurred_at,
                meta: e.meta.clone(),
                payload: e.payload.clone(),
            },
        })
        .collect()
}

/// A run id from an idempotency key: the same caller, workflow and key give the same run.
fn idempotent_id(user: Uuid, workflow: Uuid, key: &str) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"revo-run\0");
    h.update(user.as_bytes());
    h.update(workflow.as_bytes());
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

/// Appends `events` to a run's stream at `expected` and folds them onto `state` (`None`: a new
/// run). `Ok(None)`: another writer came first.
pub(crate) async fn append_run(
    engine: &Engine,
    run: Uuid,
    state: Option<RunState>,
    events: &[RunEvent],
    meta: &EventMeta,
) -> Result<Option<RunState>, StoreError> {
    let new = events
        .iter()
        .map(|e| e.to_new_event(meta.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let version = state.as_ref().map_or(0, |s| s.version);
    let expected = if state.is_some() {
        ExpectedVersion::Exact(version)
    } else {
        ExpectedVersion::NoStream
    };
    let req = AppendRequest::new(RUN_STREAM, run.to_string(), expected, new.clone());
    match engine.inner.store.append(req).await {
        Ok(_) => {
            let recs = recorded(run, version + 1, &new);
            let mut s = state;
            for (rec, e) in recs.iter().zip(events) {
                RunState::apply(&mut s, e, rec, true);
            }
            if let Some(s) = &s {
                engine.publish(s, version + 1, events).await;
            }
            Ok(s)
        }
        Err(StoreError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn EventStore>,
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        router: Router,
        hub: Hub,
        models: LiveView<ModelsProjection>,
        runs: LiveView<RunsProjection>,
        workflows: LiveView<WorkflowsProjection>,
        directory: LiveView<Directory>,
        node: String,
        settings: EngineSettings,
        metrics: WorkflowMetrics,
        sup: &Supervisor,
    ) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                store,
                bus,
                subjects,
                router,
                hub,
                models,
                runs,
                workflows,
                directory,
                node,
                settings,
                metrics,
                local: Mutex::new(HashMap::new()),
                watchers: Mutex::new(HashMap::new()),
                tracker: sup.tracker().clone(),
                cancel: sup.cancel_token().clone(),
            }),
        }
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    pub fn runs_view(&self) -> &LiveView<RunsProjection> {
        &self.inner.runs
    }

    pub fn workflows_view(&self) -> &LiveView<WorkflowsProjection> {
        &self.inner.workflows
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.inner.store
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Most bytes a template may render: an event's limit less room for the event's other
    /// fields.
    pub(crate) fn render_limit(&self) -> usize {
        self.inner.settings.max_payload.saturating_sub(1024)
    }

    /// Whether an output (its JSON text) fits in the event that records it.
    pub(crate) fn output_fits(&self, json: &str) -> bool {
        json.len() <= self.render_limit()
    }

    /// Parses and checks a definition against this node's HTTP allow-list.
    pub fn parse(&self, v: &Value) -> Result<Definition, Vec<Problem>> {
        definition::parse(v, &self.inner.settings.http)
    }

    /// A run's state, folded from its stream (current, unlike the view).
    pub async fn load(&self, run: Uuid) -> Result<Option<RunState>, EngineError> {
        let mut events = Vec::new();
        let mut from = 1;
        loop {
            let page = self
                .inner
                .store
                .read_stream(RUN_STREAM, &run.to_string(), from, 1000)
                .await?;
            let n = page.len();
            if let Some(l) = page.last() {
                from = l.envelope.version + 1;
            }
            events.extend(page);
            if n < 1000 {
                break;
            }
        }
        RunState::fold(&events).map_err(|e| EngineError::Unavailable(e.to_string()))
    }

    /// Starts a run (or, with an idempotency key already used, returns the run it started:
    /// `false`).
    pub async fn execute(&self, r: NewRun<'_>) -> Result<(RunState, bool), EngineError> {
        let def_value: Value = serde_json::from_str(&r.workflow.definition)
            .map_err(|e| EngineError::Unavailable(format!("stored definition: {e}")))?;
        let def = self.parse(&def_value).map_err(EngineError::Invalid)?;
        let problems = definition::check_input(&def, &r.input);
        if !problems.is_empty() {
            return Err(EngineError::Invalid(problems));
        }
        let run_id = match (&r.idempotency_key, &r.parent) {
            (Some(k), _) => idempotent_id(r.user_id, r.workflow.workflow_id, k),
            (None, Some(p)) => match r.replaces {
                None => idempotent_id(p.run_id, r.workflow.workflow_id, &p.step),
                Some(prev) => idempotent_id(
                    p.run_id,
                    r.workflow.workflow_id,
                    &format!("{}#{prev}", p.step),
                ),
            },
            (None, None) => Uuid::now_v7(),
        };
        if r.parent.is_none() {
            // A repeat of an idempotent request returns its run, even at the limit.
            if r.idempotency_key.is_some() {
                if let Some(existing) = self.load(run_id).await? {
                    return self.existing(existing, &r);
                }
            }
            let limit = self.inner.settings.max_active_runs_per_user;
            let active = self
                .inner
                .runs
                .read()
                .active()
                .filter(|x| x.user_id == r.user_id && x.parent.is_none())
                .count();
            if active >= limit {
                return Err(EngineError::Limited(
                    "too_many_runs",
                    format!("at most {limit} unfinished runs per user; wait for some to end or cancel them"),
                ));
            }
        }
        let created = RunEvent::Created {
            run_id,
            workflow_id: r.workflow.workflow_id,
            workflow_version: r.workflow.version,
            user_id: r.user_id,
            key_id: r.key_id,
            definition: r.workflow.definition.clone(),
            input: r.input.to_string(),
            idempotency_key: r.idempotency_key.clone(),
            parent: r.parent.clone(),
            cost_limit: def.cost_limit,
        };
        let mut meta = r.meta.clone();
        meta.correlation_id = Some(run_id);
        let events = [
            created,
            RunEvent::Claimed {
                node: self.inner.node.clone(),
            },
        ];
        match append_run(self, run_id, None, &events, &meta).await {
            Ok(Some(state)) => {
                self.start_local(state.clone());
                Ok((state, true))
            }
            Ok(None) => {
                let existing = self.load(run_id).await?.ok_or(EngineError::NotFound)?;
                self.existing(existing, &r)
            }
            Err(StoreError::PayloadTooLarge { .. }) => Err(EngineError::Invalid(vec![Problem {
                path: "$.input".into(),
                code: "invalid_value",
                message: "the input and definition are over the event size limit".into(),
            }])),
            Err(e) => Err(e.into()),
        }
    }

    /// The run an idempotent request started before (the same caller and workflow).
    fn existing(&self, run: RunState, r: &NewRun<'_>) -> Result<(RunState, bool), EngineError> {
        if run.user_id != r.user_id || run.workflow_id != r.workflow.workflow_id {
            return Err(EngineError::Conflict(
                "idempotency_conflict",
                "this Idempotency-Key was used for another request".into(),
            ));
        }
        Ok((run, false))
    }

    /// Applies a person's decision to a run, at the exact version folded (retried on a race).
    pub async fn command(
        &self,
        run: Uuid,
        by: Uuid,
        meta: EventMeta,
        cmd: Command,
    ) -> Result<RunState, EngineError> {
        for _ in 0..5 {
            let state = self.load(run).await?.ok_or(EngineError::NotFound)?;
            if matches!(cmd, Command::Retry) && state.status == RunStatus::Failed {
                // A run retried must be in the live view again, where the takeover scan
                // finds it; one that has left it (past the user's retained finished runs)
                // is not brought back.
                let shown = |v: &RunsProjection| v.get(&run).map(|_| ());
                if self
                    .inner
                    .runs
                    .wait_until(Duration::from_secs(2), shown)
                    .await
                    .is_none()
                {
                    return Err(EngineError::Conflict(
                        "run_not_retained",
                        format!(
                            "this run finished too long ago to retry (each user keeps their {} most recent finished runs); execute its workflow again",
                            revo_events::family::workflow::RETAINED_FINISHED_PER_USER
                        ),
                    ));
                }
            }
            let events = decide(&state, by, &cmd, &self.inner.node)?;
            let Some(state) = append_run(self, run, Some(state), &events, &meta).await? else {
                continue;
            };
            if matches!(cmd, Command::Retry) {
                self.start_local(state.clone());
            } else {
                self.wake(run);
            }
            if matches!(cmd, Command::Cancel) {
                // Children of a cancelled run stop too (those already ended refuse).
                for child in state.steps.values().filter_map(|s| s.child_run) {
                    let _ = Box::pin(self.command(child, by, meta.clone(), Command::Cancel)).await;
                }
            }
            return Ok(state);
        }
        Err(EngineError::Unavailable(
            "the run kept changing; try again".into(),
        ))
    }

    /// Tells this node's actor of `run`, if it has one, to read its stream.
    pub fn wake(&self, run: Uuid) {
        self.wake_at(run, None);
    }

    fn wake_at(&self, run: Uuid, version: Option<i64>) {
        if let Some(h) = lock(&self.inner.local).get(&run) {
            let _ = h.tell(RunCmd::Wake(version));
        }
    }

    /// Frames for events just appended, to the run's user's subscribed sessions.
    async fn publish(&self, state: &RunState, first_version: i64, events: &[RunEvent]) {
        for (i, e) in events.iter().enumerate() {
            let mut f = frames::of_event(state.run_id, first_version + i as i64, e);
            if matches!(
                e,
                RunEvent::Completed { .. } | RunEvent::Failed { .. } | RunEvent::Cancelled { .. }
            ) {
                f["cost_usd"] = Value::from(state.cost_usd.to_string());
            }
            self.inner
                .hub
                .user_signal(state.user_id, "workflow", f.to_string())
                .await;
        }
    }

    /// Generated text of a step: to the user's sessions and the run's SSE followers.
    pub(crate) async fn progress(
        &self,
        user: Uuid,
        run: Uuid,
        step: &str,
        item: Option<u32>,
        text: &str,
    ) {
        let f = frames::progress(run, step, item, text).to_string();
        if let Ok(subject) = self.inner.subjects.signal("run", &run.to_string()) {
            let _ = self
                .inner
                .bus
                .publish_signal(&subject, Bytes::from(f.clone()))
                .await;
        }
        self.inner.hub.user_signal(user, "workflow", f).await;
    }

    /// Changes when an event of `run` is heard of (from any edge), so a follower reads the
    /// run's stream only when it grew.
    pub fn watch(&self, run: Uuid) -> tokio::sync::watch::Receiver<i64> {
        let mut w = lock(&self.inner.watchers);
        w.retain(|_, tx| tx.receiver_count() > 0);
        w.entry(run)
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    fn heard(&self, run: Uuid, version: i64) {
        let mut w = lock(&self.inner.watchers);
        let Some(tx) = w.get(&run) else { return };
        if tx.receiver_count() == 0 {
            w.remove(&run);
            return;
        }
        tx.send_if_modified(|v| {
            let newer = version > *v;
            *v = (*v).max(version);
            newer
        });
    }

    /// Generated text of one run, for SSE (`<prefix>.sig.run.<id>`).
    pub async fn follow_progress(&self, run: Uuid) -> Option<revo_nats::MessageStream> {
        let subject = self.inner.subjects.signal("run", &run.to_string()).ok()?;
        self.inner.bus.subscribe_signals(&subject).await.ok()
    }

    /// Runs `state` on this node (it has been claimed for this node).
    fn start_local(&self, state: RunState) {
        if state.status.is_terminal() {
            return;
        }
        let id = state.run_id;
        let (handle, inbox) = mailbox::<RunCmd>("workflow.run", 64);
        {
            let mut local = lock(&self.inner.local);
            if local.get(&id).is_some_and(|h| !h.is_closed()) {
                return;
            }
            local.insert(id, handle);
            self.inner.metrics.running_here.set(local.len() as i64);
        }
        let engine = self.clone();
        self.inner.tracker.spawn(async move {
            run::RunActor::start(engine.clone(), state, inbox).await;
            let mut local = lock(&engine.inner.local);
            if local.get(&id).is_some_and(|h| h.is_closed()) {
                local.remove(&id);
            }
            engine.inner.metrics.running_here.set(local.len() as i64);
        });
    }

    /// Claims `run` for this node at the version folded; true if this node now runs it.
    async fn claim(&self, run: Uuid) -> Result<bool, EngineError> {
        let Some(state) = self.load(run).await? else {
            return Ok(false);
        };
        if state.status.is_terminal() {
            return Ok(false);
        }
        let meta = EventMeta {
            actor: Some("system".into()),
            correlation_id: Some(run),
            causation_id: None,
        };
        if let Some(why) = self.standing(state.user_id, state.key_id) {
            // Never resumed for a disabled owner or a dead key: ended instead.
            let end = [RunEvent::Cancelled {
                by: None,
                reason: why.into(),
            }];
            append_run(self, run, Some(state), &end, &meta).await?;
            return Ok(false);
        }
        let claim = [RunEvent::Claimed {
            node: self.inner.node.clone(),
        }];
        match append_run(self, run, Some(state), &claim, &meta).await? {
            Some(state) => {
                self.inner.metrics.takeovers.inc();
                tracing::info!(run = %run, node = %self.inner.node, "workflow run claimed");
                self.start_local(state);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Starts the scan and the event follower under the supervisor.
    pub fn start(&self, sup: &Supervisor) {
        let engine = self.clone();
        sup.spawn("workflows.scan", move |ctx| {
            let engine = engine.clone();
            async move { engine.scan(ctx).await }
        });
        let engine = self.clone();
        sup.spawn("workflows.events", move |ctx| {
            let engine = engine.clone();
            async move { engine.follow_events(ctx).await }
        });
    }

    async fn scan(self, ctx: Context) -> Result<(), String> {
        ctx.health.ready();
        let mut tick = tokio::time::interval(self.inner.settings.scan_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ctx.cancel.cancelled() => return Ok(()),
            }
            self.update_metrics();
            self.wake_unstanding();
            let now = chrono::Utc::now();
            let wanted: Vec<Uuid> = {
                let local = lock(&self.inner.local);
                if local.len() >= self.inner.settings.max_runs_here {
                    continue;
                }
                let view = self.inner.runs.read();
                view.active()
                    .filter(|r| local.get(&r.run_id).is_none_or(|h| h.is_closed()))
                    .filter(|r| match &r.owner {
                        // Created but never claimed: its edge died between the two.
                        None => (now - r.created_at).num_seconds() >= 2,
                        Some(o) => o == &self.inner.node || !self.inner.hub.node_alive(o),
                    })
                    .map(|r| r.run_id)
                    .take(100)
                    .collect()
            };
            for run in wanted {
                if ctx.cancel.is_cancelled() {
                    return Ok(());
                }
                if let Err(e) = self.claim(run).await {
                    tracing::warn!(run = %run, error = %e, "workflow run not claimed");
                }
            }
        }
    }

    fn update_metrics(&self) {
        let m = &self.inner.metrics;
        let view = self.inner.runs.read();
        let mut by_state: HashMap<&'static str, i64> = HashMap::new();
        let mut cost: u128 = 0;
        let mut timers = 0;
        for r in view.all() {
            *by_state.entry(r.status.as_str()).or_default() += 1;
            cost = cost.saturating_add(r.cost_usd.picos());
            timers += r
                .steps
                .values()
                .filter(|s| s.status == StepStatus::Waiting && s.fire_at.is_some())
                .count() as i64;
        }
        for s in [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Waiting,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            m.runs
                .with_label_values(&[s.as_str()])
                .set(by_state.get(s.as_str()).copied().unwrap_or(0));
        }
        m.cost.set(cost as f64 / 1e12);
        m.timers_pending.set(timers);
    }

    async fn follow_events(self, ctx: Context) -> Result<(), String> {
        let filter = self
            .inner
            .subjects
            .events_of_type(RUN_STREAM)
            .map_err(|e| e.to_string())?;
        let mut sub = self
            .inner
            .bus
            .subscribe_events(&filter)
            .await
            .map_err(|e| e.to_string())?;
        ctx.health.ready();
        loop {
            tokio::select! {
                msg = sub.next() => {
                    let Some(msg) = msg else { return Err("the bus ended the subscription".into()) };
                    let Ok(msg) = msg else { continue };
                    let Some(id) = msg.subject.rsplit('.').next().and_then(|s| Uuid::try_parse(s).ok()) else { continue };
                    let version = revo_events::codec::decode_wire(&msg.payload).ok().map(|e| e.version);
                    self.wake_at(id, version);
                    self.heard(id, version.unwrap_or(i64::MAX));
                    // A child's progress may be what its parent waits for.
                    let parent = self.inner.runs.read().get(&id).and_then(|r| r.parent.as_ref().map(|p| p.run_id));
                    if let Some(p) = parent {
                        self.wake(p);
                    }
                }
                _ = ctx.cancel.cancelled() => return Ok(()),
            }
        }
    }

    /// Waits (up to `timeout`) for this node's live view to show `run` at `version`.
    pub async fn view_caught_up(&self, run: Uuid, version: i64, timeout: Duration) {
        let view = &self.inner.runs;
        let shown = |v: &RunsProjection| v.get(&run).filter(|r| r.version >= version).map(|_| ());
        view.wait_until(timeout, shown).await;
    }
}

/// The events a person's decision appends, or why it does not apply.
fn decide(s: &RunState, by: Uuid, cmd: &Command, node: &str) -> Result<Vec<RunEvent>, EngineError> {
    let waiting_approval = || {
        s.steps.iter().find_map(|(id, st)| {
            (st.status == StepStatus::Waiting
                && st.approval.as_ref().is_some_and(|a| a.approved.is_none()))
            .then(|| id.clone())
        })
    };
    match cmd {
        Command::Cancel => {
            if s.status.is_terminal() {
                return Err(EngineError::Conflict(
                    "run_finished",
                    format!("the run has already {}", s.status.as_str()),
                ));
            }
            Ok(vec![RunEvent::Cancelled {
                by: Some(by),
                reason: "cancelled by request".into(),
            }])
        }
        Command::Approve { comment } | Command::Reject { comment } => {
            if s.status.is_terminal() {
                return Err(EngineError::Conflict(
                    "run_finished",
                    format!("the run has already {}", s.status.as_str()),
                ));
            }
            let step = waiting_approval().ok_or_else(|| {
                EngineError::Conflict(
                    "not_waiting_for_approval",
                    "no step of this run is waiting for approval".into(),
                )
            })?;
            Ok(vec![RunEvent::ApprovalDecided {
                step,
                approved: matches!(cmd, Command::Approve { .. }),
                by: Some(by),
                comment: comment.clone(),
            }])
        }
        Command::Retry => {
            if s.status != RunStatus::Failed {
                return Err(EngineError::Conflict(
                    "not_failed",
                    format!(
                        "only a failed run is retried; this one is {}",
                        s.status.as_str()
                    ),
                ));
            }
            Ok(vec![
                RunEvent::Retried { by },
                RunEvent::Claimed {
                    node: node.to_owned(),
                },
            ])
        }
    }
}

/// What the run has left under its cost limit.
pub(crate) fn remaining(s: &RunState, reserved: Usd) -> Option<Usd> {
    let limit = s.cost_limit?;
    Some(
        limit
            .checked_sub(s.cost_usd)
            .and_then(|l| l.checked_sub(reserved))
            .unwrap_or(Usd::ZERO),
    )
}
