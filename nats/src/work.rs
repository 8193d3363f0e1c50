//! Work over core NATS: a request published to a subject that a queue group of workers shares,
//! answered by a stream of replies on the requester's inbox. Used for model workers; not
//! persisted (a lost request is retried or failed by the requester, never replayed).

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::BusError;

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
pub struct WorkClient {
    client: async_nats::Client,
}

impl WorkClient {
    pub async fn connect(url: &str, name: &str) -> Result<WorkClient, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .connect(url)
            .await
            .map_err(unavailable)?;
        Ok(WorkClient { client })
    }

    fn stream(sub: async_nats::Subscriber) -> WorkStream {
        sub.map(|m| WorkMessage {
            subject: m.subject.to_string(),
            reply: m.reply.map(|r| r.to_string()),
            payload: m.payload,
        })
        .boxed()
    }

    /// Subscribes (and makes sure the server knows before returning).
    pub async fn subscribe(&self, subject: &str) -> Result<WorkStream, BusError> {
        let sub = self
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(unavailable)?;
        self.client.flush().await.map_err(unavailable)?;
        Ok(Self::stream(sub))
    }

    /// Takes a share of `subject`'s messages with the other members of `group`.
    pub async fn queue_subscribe(
        &self,
        subject: &str,
        group: &str,
    ) -> Result<WorkStream, BusError> {
        let sub = self
            .client
            .queue_subscribe(subject.to_owned(), group.to_owned())
            .await
            .map_err(unavailable)?;
        self.client.flush().await.map_err(unavailable)?;
        Ok(Self::stream(sub))
    }

    /// Publishes a request and returns its inbox and the stream of replies to it.
    pub async fn request(
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

    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        publish_core(&self.client, subject, payload).await
    }

    /// Sends whatever is buffered.
    pub async fn flush(&self) -> Result<(), BusError> {
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
