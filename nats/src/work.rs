//! The work transport: a request published to a subject that a queue group of workers shares,
//! answered by a stream of replies on the requester's inbox, plus plain publish/subscribe for
//! heartbeats and cancels. Used for model workers; not persisted (a lost request is retried or
//! failed by the requester, never replayed).
//!
//! Two implementations of one seam: [`NatsWork`] (core NATS, cluster mode) and
//! [`MemoryWork`](crate::work_memory::MemoryWork) (in-process, embedded mode), so both modes
//! run the same workers and the same clients over the same protocol.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::BusError;

#[async_trait]
pub trait WorkTransport: Send + Sync + 'static {
    /// Subscribes (the subscription is in place when this returns). `*` matches one subject
    /// token, a final `>` the rest.
    async fn subscribe(&self, subject: &str) -> Result<WorkStream, BusError>;
    /// Takes a share of `subject`'s messages with the other members of `group`: each message
    /// goes to one member.
    async fn queue_subscribe(&self, subject: &str, group: &str) -> Result<WorkStream, BusError>;
    /// Publishes a request and returns its inbox and the stream of replies to it.
    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
    ) -> Result<(String, WorkStream), BusError>;
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;
    /// Sends whatever is buffered.
    async fn flush(&self) -> Result<(), BusError>;
}

/// A message received from work subjects.
#[derive(Debug, Clone)]
pub struct WorkMessage {
    pub subject: String,
    /// Where to answer (requests only).
    pub reply: Option<String>,
    pub payload: Bytes,
}

pub type WorkStream = BoxStream<'static, WorkMessage>;

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// A NATS connection for work requests and their replies.
#[derive(Clone)]
pub struct NatsWork {
    client: async_nats::Client,
}

impl NatsWork {
    pub async fn connect(url: &str, name: &str) -> Result<NatsWork, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .connect(url)
            .await
            .map_err(unavailable)?;
        Ok(NatsWork { client })
    }

    fn stream(sub: async_nats::Subscriber) -> WorkStream {
        sub.map(|m| WorkMessage {
            subject: m.subject.to_string(),
            reply: m.reply.map(|r| r.to_string()),
            payload: m.payload,
        })
        .boxed()
    }
}

#[async_trait]
impl WorkTransport for NatsWork {
    async fn subscribe(&self, subject: &str) -> Result<WorkStream, BusError> {
        let sub = self
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(unavailable)?;
        self.client.flush().await.map_err(unavailable)?;
        Ok(Self::stream(sub))
    }

    async fn queue_subscribe(&self, subject: &str, group: &str) -> Result<WorkStream, BusError> {
        let sub = self
            .client
            .queue_subscribe(subject.to_owned(), group.to_owned())
            .await
            .map_err(unavailable)?;
        self.client.flush().await.map_err(unavailable)?;
        Ok(Self::stream(sub))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
    ) -> Result<(String, WorkStream), BusError> {
        let inbox = self.client.new_inbox();
        let replies = self.subscribe(&inbox).await?;
        self.client
            .publish_with_reply(subject.to_owned(), inbox.clone(), payload)
            .await
            .map_err(unavailable)?;
        Ok((inbox, replies))
    }

    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        publish_core(&self.client, subject, payload).await
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(unavailable)
    }
}

/// Publishes on core NATS (not persisted): the one place outside JetStream that does.
#[allow(clippy::disallowed_methods)]
pub(crate) async fn publish_core(
    client: &async_nats::Client,
    subject: &str,
    payload: Bytes,
) -> Result<(), BusError> {
    client
        .publish(subject.to_owned(), payload)
        .await
        .map_err(|e| BusError::Publish {
            subject: subject.to_owned(),
            msg_id: String::new(),
            reason: e.to_string(),
        })
}
