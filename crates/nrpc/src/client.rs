//! The nrpc client: calls gRPC methods of a node over NATS, as nats-grpc's Go client
//! does, with the rules that make it work against Go servers too
//! (docs/RPC.md sections 7 and 9): a fresh inbox per call, subscribed first; `call`
//! then `data` back to back; no `end{}` after a unary request (a Go v0.1.12 server would
//! read it before the data); at most one `end` per call; a `503` no-responders status on
//! the inbox is `UNAVAILABLE` at once; deadlines enforced here (nothing travels on the
//! wire), with an `end{status}` to cancel the call at the server.

use std::time::Duration;

use async_nats::{Client as Nats, Subject, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use islb_proto::nrpc::{self, response};
use prost::Message as _;

use crate::frame::{self, Metadata};
use crate::status::{Code, Status};
use crate::subject;

/// Calls the services of one node.
#[derive(Clone)]
pub struct Client {
    nats: Nats,
    target: String,
    nid: String,
}

/// What arrived on a call's inbox.
enum Frame {
    Data(Bytes),
    End(Option<Status>),
    Begin,
}

async fn next_frame(sub: &mut Subscriber, timeout: Duration) -> Result<Frame, Status> {
    loop {
        let msg = match tokio::time::timeout(timeout, sub.next()).await {
            Err(_) => return Err(Status::deadline_exceeded(format!("no answer within {timeout:?}"))),
            Ok(None) => return Err(Status::unavailable("the NATS subscription ended")),
            Ok(Some(m)) => m,
        };
        if let Some(status) = msg.status {
            if status == async_nats::StatusCode::NO_RESPONDERS {
                return Err(Status::unavailable("no server serves this method on NATS (no responders)"));
            }
            continue; // other status messages carry no frame
        }
        let resp =
            nrpc::Response::decode(msg.payload).map_err(|e| Status::internal(format!("malformed nrpc frame: {e}")))?;
        return Ok(match resp.r#type {
            Some(response::Type::Data(d)) => Frame::Data(d.data.into()),
            Some(response::Type::End(e)) => Frame::End(e.status.as_ref().map(Status::from_proto)),
            Some(response::Type::Begin(_)) => Frame::Begin,
            None => continue,
        });
    }
}

impl Client {
    /// A client of node `target` (its nid; empty for nid-less servers), calling as node
    /// `nid` (sent on streams, for the server's node-down cleanup).
    pub fn new(nats: Nats, target: impl Into<String>, nid: impl Into<String>) -> Self {
        Client { nats, target: target.into(), nid: nid.into() }
    }

    /// The node called.
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn open_inbox(&self) -> Result<(Subject, Subscriber), Status> {
        let inbox = Subject::from(self.nats.new_inbox());
        let sub = self.nats.subscribe(inbox.clone()).await.map_err(|e| Status::unavailable(format!("NATS: {e}")))?;
        Ok((inbox, sub))
    }

    /// Publishes one frame of a call (the subjects are shared, not copied).
    async fn publish(&self, subject: &Subject, inbox: &Subject, payload: Bytes) -> Result<(), Status> {
        self.nats
            .publish_with_reply(subject.clone(), inbox.clone(), payload)
            .await
            .map_err(|e| Status::unavailable(format!("NATS: {e}")))
    }

    /// A unary call of `path` (`/pkg.Service/Method`): the response message, or the status.
    pub async fn unary(&self, path: &str, request: Bytes, md: &Metadata, timeout: Duration) -> Result<Bytes, Status> {
        let subject = Subject::from(subject::method_subject(&self.target, path));
        let (inbox, mut sub) = self.open_inbox().await?;
        self.publish(&subject, &inbox, frame::call(path, md, "")).await?;
        self.publish(&subject, &inbox, frame::request_data(request)).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let result = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match next_frame(&mut sub, left).await {
                Ok(Frame::Begin) => continue,
                Ok(Frame::Data(d)) => break Ok(d),
                Ok(Frame::End(Some(s))) => break Err(s),
                Ok(Frame::End(None)) => break Err(Status::internal("the call ended without a response message")),
                Err(s) => {
                    if s.code == Code::DeadlineExceeded {
                        let _ = self
                            .publish(&subject, &inbox, frame::request_end(Some(&Status::cancelled("deadline"))))
                            .await;
                    }
                    break Err(s);
                }
            }
        };
        let _ = sub.unsubscribe().await;
        result
    }

    /// A unary call with protobuf messages.
    pub async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        path: &str,
        request: &Req,
        md: &Metadata,
        timeout: Duration,
    ) -> Result<Resp, Status> {
        let reply = self.unary(path, request.encode_to_vec().into(), md, timeout).await?;
        Resp::decode(reply).map_err(|e| Status::internal(format!("bad response message: {e}")))
    }

    /// Opens a stream (server-, client- or bidi-streaming) of `path`.
    pub async fn open(&self, path: &str, md: &Metadata) -> Result<ClientStream, Status> {
        let subject = Subject::from(subject::method_subject(&self.target, path));
        let (inbox, sub) = self.open_inbox().await?;
        // Go sends the call with the first message and the subject as method; so does this.
        self.publish(&subject, &inbox, frame::call(&subject, md, &self.nid)).await?;
        Ok(ClientStream { client: self.clone(), subject, inbox, sub, ended: false, end_sent: false })
    }
}

/// One open stream. Dropped before its end, it cancels the call at the server.
pub struct ClientStream {
    client: Client,
    subject: Subject,
    inbox: Subject,
    sub: Subscriber,
    /// The server's `end` arrived.
    ended: bool,
    /// Our one `end` (half-close or cancel) went out.
    end_sent: bool,
}

impl ClientStream {
    /// Sends one request message.
    pub async fn send(&self, msg: Bytes) -> Result<(), Status> {
        if self.end_sent {
            return Err(Status::failed_precondition("the stream was half-closed"));
        }
        self.client.publish(&self.subject, &self.inbox, frame::request_data(msg)).await
    }

    /// Sends one request message.
    pub async fn send_message(&self, m: &impl prost::Message) -> Result<(), Status> {
        self.send(m.encode_to_vec().into()).await
    }

    /// Half-closes: no more request messages (sent once).
    pub async fn close_send(&mut self) -> Result<(), Status> {
        if self.end_sent {
            return Ok(());
        }
        self.end_sent = true;
        self.client.publish(&self.subject, &self.inbox, frame::request_end(None)).await
    }

    /// The next response message; `None` when the server ended the call successfully.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<Bytes>, Status> {
        if self.ended {
            return Ok(None);
        }
        loop {
            match next_frame(&mut self.sub, timeout).await? {
                Frame::Begin => continue,
                Frame::Data(d) => return Ok(Some(d)),
                Frame::End(None) => {
                    self.ended = true;
                    return Ok(None);
                }
                Frame::End(Some(s)) => {
                    self.ended = true;
                    return Err(s);
                }
            }
        }
    }

    /// The next response message decoded as `M`.
    pub async fn recv_message<M: prost::Message + Default>(&mut self, timeout: Duration) -> Result<Option<M>, Status> {
        match self.recv(timeout).await? {
            None => Ok(None),
            Some(b) => M::decode(b).map(Some).map_err(|e| Status::internal(format!("bad response message: {e}"))),
        }
    }

    /// Cancels the call at the server (`end{status{CANCELLED}}`), which then sends nothing.
    /// After a half-close nothing more is sent (at most one `end` per call: two crash a Go
    /// v0.1.12 server); the server's answers are just no longer read.
    pub async fn cancel(mut self) {
        if !self.ended && !self.end_sent {
            self.end_sent = true;
            let _ = self.client.publish(&self.subject, &self.inbox, cancel_frame()).await;
            // Out before the caller moves on (or the process exits).
            let _ = self.client.nats.flush().await;
        }
        self.ended = true;
        let _ = self.sub.unsubscribe().await;
    }
}

fn cancel_frame() -> Bytes {
    frame::request_end(Some(&Status::cancelled("cancelled")))
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        if self.ended || self.end_sent {
            return;
        }
        // Dropped mid-call (an error, a timeout, a panic): tell the server, best effort.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (nats, subject, inbox) = (self.client.nats.clone(), self.subject.clone(), self.inbox.clone());
            rt.spawn(async move {
                let _ = nats.publish_with_reply(subject, inbox, cancel_frame()).await;
            });
        }
    }
}
