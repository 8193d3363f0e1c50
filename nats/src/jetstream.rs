//! The JetStream bus (cluster mode).
//!
//! Events go to the `<PREFIX>_EVENTS` stream (subjects `<prefix>.evt.>`, file storage, limits
//! retention) with `Nats-Msg-Id` set to the event id, so that JetStream drops a republished event
//! within the dedup window. Signals use core NATS and are never stored.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::bus::{
    Bus, BusError, BusHealth, BusMessage, MessageStream, OutgoingEvent, PublishOutcome,
};
use crate::subjects::Subjects;

/// Default dedup window: long enough to cover a relay crash, restart or takeover (which happen
/// within seconds), short enough that JetStream's id index stays small.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    pub url: String,
    pub subjects: Subjects,
    pub dedup_window: Duration,
    /// Name this connection shows in `nats server report connections`.
    pub connection_name: String,
    pub limits: StreamLimits,
}

/// Durability and retention of the events stream (`[jetstream]` in revo.toml).
///
/// Postgres keeps every event forever; the stream is the transport to other nodes and outside
/// subscribers, so it keeps a bounded tail (by age and size, oldest dropped first) that a
/// subscriber can catch up from, and anything older is republished from Postgres on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Copies kept by a JetStream cluster (1, 3 or 5; 3 in production: one server may fail
    /// without losing acknowledged messages).
    pub replicas: usize,
    /// Oldest message kept (`Duration::ZERO`: no age limit).
    pub max_age: Duration,
    /// Largest stream size in bytes (`None`: no size limit).
    pub max_bytes: Option<u64>,
}

/// A week of events: enough for any subscriber outage worth waiting out.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            replicas: 1,
            max_age: DEFAULT_MAX_AGE,
            max_bytes: None,
        }
    }
}

pub struct JetStreamBus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: JetStreamConfig,
}

impl JetStreamBus {
    /// Connects. If NATS is down the client keeps retrying in the background, so a node can start
    /// (and keep committing events) while the bus is away.
    pub async fn connect(config: JetStreamConfig) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(config.connection_name.clone())
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(config.url.as_str())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let js = jetstream::new(client.clone());
        Ok(JetStreamBus { client, js, config })
    }

    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.config.subjects.events_stream(),
            subjects: vec![self.config.subjects.all_events()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: self.config.dedup_window,
            num_replicas: self.config.limits.replicas,
            max_age: self.config.limits.max_age,
            max_bytes: self
                .config
                .limits
                .max_bytes
                .and_then(|b| i64::try_from(b).ok())
                .unwrap_or(-1),
            discard: stream::DiscardPolicy::Old,
            description: Some("Revo committed events (see docs/events.md)".into()),
            ..Default::default()
        }
    }

    /// The underlying client, for tests and tools that read the stream directly.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Deletes the events stream (tests clean up after themselves with this).
    pub async fn delete_stream(&self) -> Result<(), BusError> {
        self.js
            .delete_stream(self.config.subjects.events_stream())
            .await
            .map(|_| ())
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }
}

fn message_id(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned())
}

#[async_trait]
impl Bus for JetStreamBus {
    async fn ensure(&self) -> Result<(), BusError> {
        self.js
            .create_or_update_stream(self.stream_config())
            .await
            .map(|_| ())
            .map_err(|e| BusError::Config(e.to_string()))
    }

    async fn publish_events(&self, batch: Vec<OutgoingEvent>) -> PublishOutcome {
        // Pipelined: send everything, then collect acks in order. The acked prefix is what the
        // caller may checkpoint; anything after a failure is republished (and deduplicated).
        // Known limit: if JetStream rejected one message and then accepted a later one of the
        // same stream, the retry would deliver them out of order. Failures seen in practice
        // (connection loss, timeouts) fail every later message too.
        let mut pending = Vec::with_capacity(batch.len());
        let mut send_error = None;
        for ev in batch {
            let publish = jetstream::context::Publish::build()
                .payload(ev.payload)
                .message_id(&ev.msg_id);
            match self.js.send_publish(ev.subject.clone(), publish).await {
                Ok(ack) => pending.push((ev.subject, ev.msg_id, ack)),
                Err(e) => {
                    send_error = Some(BusError::Publish {
                        subject: ev.subject,
                        msg_id: ev.msg_id,
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        let mut acked = 0;
        for (subject, msg_id, ack) in pending {
            match ack.await {
                Ok(_) => acked += 1,
                Err(e) => {
                    return PublishOutcome {
                        acked,
                        error: Some(BusError::Publish {
                            subject,
                            msg_id,
                            reason: e.to_string(),
                        }),
                    }
                }
            }
        }
        PublishOutcome {
            acked,
            error: send_error,
        }
    }

    async fn subscribe_events(&self, filter: &str) -> Result<MessageStream, BusError> {
        let stream = self
            .js
            .get_stream(self.config.subjects.events_stream())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter.to_owned(),
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(messages
            .map_err(|e| BusError::Unavailable(e.to_string()))
            .map_ok(|m| BusMessage {
                subject: m.subject.to_string(),
                msg_id: message_id(m.headers.as_ref()),
                payload: m.payload.clone(),
            })
            .boxed())
    }

    async fn publish_signal(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        crate::work::publish_core(&self.client, subject, payload).await
    }

    async fn subscribe_signals(&self, filter: &str) -> Result<MessageStream, BusError> {
        let sub = self
            .client
            .subscribe(filter.to_owned())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        // Make sure the server has registered the interest before the caller relies on it.
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(sub
            .map(|m| {
                Ok(BusMessage {
                    msg_id: message_id(m.headers.as_ref()),
                    subject: m.subject.to_string(),
                    payload: m.payload,
                })
            })
            .boxed())
    }

    fn health(&self) -> BusHealth {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => BusHealth::Connected,
            other => BusHealth::Degraded(format!("nats {other}")),
        }
    }

    async fn close(&self) {
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "flushing NATS on close failed");
        }
    }
}
