//! Where a dead-lettered invocation is also sent, beside the dead-letter list
//! that is always kept: the seam for a message-queue subject (NATS), added by
//! the message-queue triggers.

use std::future::Future;
use std::pin::Pin;

use super::record::Invocation;

/// Told of every invocation that is dead-lettered, after it is stored as dead.
/// It cannot undo that: a sink that fails logs and carries on.
pub trait DeadLetterSink: Send + Sync {
    fn dead_lettered<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}
