//! The broker seam: what the session driver needs from the broker side.
//!
//! The driver (`transport::driver`) runs a session against anything that
//! implements [`BrokerSession`]: in production the AMQP bridge's
//! [`SessionBroker`], in the driver's tests an
//! in-memory broker with a simulated clock, so heart-beats, receipts after
//! confirms, token expiry, slow clients and the drain are tested
//! deterministically without a socket or RabbitMQ.

use std::future::Future;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::fanout::Subscriber;
use super::{BridgeError, Inbound, SessionBroker};
use crate::session::{PublishRequest, SubscribeRequest};

/// Resolves when the broker confirmed a publish (`Err` when it refused).
pub type Confirm = BoxFuture<'static, Result<(), BridgeError>>;

/// One session's broker side.
pub trait BrokerSession: Send {
    /// Unique within the process: names the session in fan-out and logs.
    fn key(&self) -> u64;
    /// The next message or event of the session's own consumers.
    fn next_inbound(&mut self) -> impl Future<Output = Inbound> + Send;
    fn subscribe(
        &mut self,
        request: &SubscribeRequest,
        subscriber: Subscriber,
    ) -> impl Future<Output = Result<(), BridgeError>> + Send;
    fn unsubscribe(&mut self, id: &str) -> impl Future<Output = ()> + Send;
    fn delete_durable(&mut self, id: &str) -> impl Future<Output = Result<(), BridgeError>> + Send;
    /// Publishes; the [`Confirm`] resolves when the broker took it.
    fn publish(
        &mut self,
        request: &PublishRequest,
    ) -> impl Future<Output = Result<Confirm, BridgeError>> + Send;
    /// How long a publish may wait for its confirm.
    fn confirm_timeout(&self) -> Duration;
    fn ack(
        &mut self,
        subscription: &str,
        tag: u64,
        multiple: bool,
    ) -> impl Future<Output = Result<(), BridgeError>> + Send;
    fn nack(
        &mut self,
        subscription: &str,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> impl Future<Output = Result<(), BridgeError>> + Send;
    /// The subscription has a queue consumer of its own (not fan-out).
    fn has_own(&self, subscription: &str) -> bool;
    /// The consumer of `subscription` consumes again, from `queue`.
    fn restarted(&mut self, subscription: &str, queue: String);
    /// CONNECT selected `vhost` (before any subscription): the session's
    /// broker side moves there.
    fn select_vhost(&mut self, vhost: &str)
        -> impl Future<Output = Result<(), BridgeError>> + Send;
    /// Releases everything; unacked queue messages are requeued.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

impl BrokerSession for SessionBroker {
    fn key(&self) -> u64 {
        SessionBroker::key(self)
    }

    fn next_inbound(&mut self) -> impl Future<Output = Inbound> + Send {
        SessionBroker::next_inbound(self)
    }

    fn subscribe(
        &mut self,
        request: &SubscribeRequest,
        subscriber: Subscriber,
    ) -> impl Future<Output = Result<(), BridgeError>> + Send {
        SessionBroker::subscribe(self, request, subscriber)
    }

    fn unsubscribe(&mut self, id: &str) -> impl Future<Output = ()> + Send {
        SessionBroker::unsubscribe(self, id)
    }

    fn delete_durable(&mut self, id: &str) -> impl Future<Output = Result<(), BridgeError>> + Send {
        SessionBroker::delete_durable(self, id)
    }

    async fn publish(&mut self, request: &PublishRequest) -> Result<Confirm, BridgeError> {
        let confirm = SessionBroker::publish(self, request).await?;
        Ok(Box::pin(async move {
            match confirm.await {
                Ok(c) if c.is_ack() => Ok(()),
                Ok(_) => Err(BridgeError::Nacked),
                Err(e) => Err(BridgeError::Amqp(e)),
            }
        }))
    }

    fn confirm_timeout(&self) -> Duration {
        SessionBroker::confirm_timeout(self)
    }

    fn ack(
        &mut self,
        subscription: &str,
        tag: u64,
        multiple: bool,
    ) -> impl Future<Output = Result<(), BridgeError>> + Send {
        SessionBroker::ack(self, subscription, tag, multiple)
    }

    fn nack(
        &mut self,
        subscription: &str,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> impl Future<Output = Result<(), BridgeError>> + Send {
        SessionBroker::nack(self, subscription, tag, multiple, requeue)
    }

    fn has_own(&self, subscription: &str) -> bool {
        SessionBroker::has_own(self, subscription)
    }

    fn restarted(&mut self, subscription: &str, queue: String) {
        SessionBroker::restarted(self, subscription, queue)
    }

    fn select_vhost(
        &mut self,
        vhost: &str,
    ) -> impl Future<Output = Result<(), BridgeError>> + Send {
        SessionBroker::select_vhost(self, vhost)
    }

    fn close(&mut self) -> impl Future<Output = ()> + Send {
        SessionBroker::close(self)
    }
}
