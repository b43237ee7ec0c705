//! Where the registry's messages go: replies, node events and session events.
//!
//! The registry service publishes through an [`Outbox`] instead of holding a NATS client,
//! so the shell runs unchanged without a network: tests hand it a [`MemoryOutbox`] and a
//! paused clock. In production the outbox is the NATS client itself.

use async_nats::Subject;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

/// A message could not be handed to NATS.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PublishError(String);

/// Publishes messages on subjects.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Publishes `payload` on `subject` (fire and forget, as a NATS publish).
    async fn publish(&self, subject: Subject, payload: Bytes) -> Result<(), PublishError>;

    /// Whether the outbox is connected (NATS's connection state; always true in memory).
    fn connected(&self) -> bool {
        true
    }
}

#[async_trait]
impl Outbox for async_nats::Client {
    async fn publish(&self, subject: Subject, payload: Bytes) -> Result<(), PublishError> {
        async_nats::Client::publish(self, subject, payload).await.map_err(|e| PublishError(e.to_string()))
    }

    fn connected(&self) -> bool {
        crate::nats::connected(self)
    }
}

/// A message published to a [`MemoryOutbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its subject.
    pub subject: String,
    /// Its payload.
    pub payload: Bytes,
}

/// An outbox that hands every message to a channel (for tests).
#[derive(Debug, Clone)]
pub struct MemoryOutbox(mpsc::UnboundedSender<Published>);

impl MemoryOutbox {
    /// An outbox and the receiving end of what it publishes.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Published>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (MemoryOutbox(tx), rx)
    }
}

#[async_trait]
impl Outbox for MemoryOutbox {
    async fn publish(&self, subject: Subject, payload: Bytes) -> Result<(), PublishError> {
        self.0
            .send(Published { subject: subject.to_string(), payload })
            .map_err(|_| PublishError("the receiver is gone".into()))
    }
}
