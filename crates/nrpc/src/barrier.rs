//! A barrier on a NATS connection: returns once the server has read everything the
//! connection sent before it, subscriptions included.
//!
//! `flush` only empties the client's socket buffer. Until the server has read a `SUB`, a
//! message another connection publishes is not delivered to it (and a request finds "no
//! responders"), so "subscribed and flushed" is not "listening". A message a connection
//! publishes to a subject it subscribes comes back only after the server has handled
//! every earlier operation of that connection, in order.

use std::time::Duration;

use futures::StreamExt;

/// Why a barrier did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    /// The connection failed.
    #[error("NATS: {0}")]
    Nats(String),
    /// The server did not echo within the timeout.
    #[error("the NATS server did not echo a message within {0:?}")]
    Timeout(Duration),
}

/// Waits until the server has read everything `client` sent before this call.
pub async fn barrier(client: &async_nats::Client, timeout: Duration) -> Result<(), BarrierError> {
    let inbox = client.new_inbox();
    let nats = |e: &dyn std::fmt::Display| BarrierError::Nats(e.to_string());
    let mut sub = client.subscribe(inbox.clone()).await.map_err(|e| nats(&e))?;
    client.publish(inbox, bytes::Bytes::new()).await.map_err(|e| nats(&e))?;
    client.flush().await.map_err(|e| nats(&e))?;
    let echoed = tokio::time::timeout(timeout, sub.next()).await;
    let _ = sub.unsubscribe().await;
    match echoed {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(BarrierError::Nats("the subscription closed".into())),
        Err(_) => Err(BarrierError::Timeout(timeout)),
    }
}
