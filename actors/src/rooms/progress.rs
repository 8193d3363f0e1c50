//! Live generation progress for WebSocket subscribers (`subscribe` to `generation`): a routed
//! request's updates pass through here on their way to the HTTP response, and become
//! `generation.started`, `generation.token` (text coalesced every 50 ms) and
//! `generation.completed` frames on `<prefix>.sig.user.<user>`, which every edge delivers to
//! that user's subscribed sessions (a session opened with an API key: only that key's).

use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::Hub;
use crate::router::Update;

/// How often streamed text is sent as one `generation.token` frame.
const COALESCE: Duration = Duration::from_millis(50);

/// Forwards `rx` unchanged (and with its backpressure) while publishing progress. The caller
/// dropping the returned receiver drops `rx` at once, so the router sees the client leave.
pub fn tee(
    hub: &Hub,
    user: Uuid,
    key: Option<Uuid>,
    id: String,
    mut rx: mpsc::Receiver<Update>,
) -> mpsc::Receiver<Update> {
    let (tx, out) = mpsc::channel(64);
    let hub = hub.clone();
    hub.tracker().clone().spawn(async move {
        let mut pending = String::new();
        let mut flushed = Instant::now();
        loop {
            let update = tokio::select! {
                u = rx.recv() => u,
                _ = tx.closed() => return,
            };
            let Some(update) = update else { return };
            match &update {
                Update::Started {
                    model,
                    provider,
                    served_locally,
                } => {
                    let f = json!({"type": "generation.started", "id": id, "model": model,
                        "provider": provider, "served_locally": served_locally});
                    hub.user_signal_from(user, key, "generation", f.to_string())
                        .await;
                }
                Update::Text(t) => {
                    pending.push_str(t);
                    if flushed.elapsed() >= COALESCE {
                        flush(&hub, user, key, &id, &mut pending).await;
                        flushed = Instant::now();
                    }
                }
                Update::Done(r) => {
                    flush(&hub, user, key, &id, &mut pending).await;
                    let f = match r.as_ref() {
                        Ok(a) => json!({"type": "generation.completed", "id": id,
                            "model": a.model, "served_locally": a.served_locally,
                            "finish_reason": a.finish_reason, "cost_usd": a.cost.to_string(),
                            "usage": {"input": a.usage.input, "output": a.usage.output}}),
                        Err(e) => json!({"type": "generation.completed", "id": id,
                            "error": {"code": e.code, "message": e.message}}),
                    };
                    hub.user_signal_from(user, key, "generation", f.to_string())
                        .await;
                }
                _ => {}
            }
            if tx.send(update).await.is_err() {
                return;
            }
        }
    });
    out
}

async fn flush(hub: &Hub, user: Uuid, key: Option<Uuid>, id: &str, pending: &mut String) {
    if pending.is_empty() {
        return;
    }
    let f = json!({"type": "generation.token", "id": id, "text": std::mem::take(pending)});
    hub.user_signal_from(user, key, "generation", f.to_string())
        .await;
}
