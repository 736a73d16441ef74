//! The answer every frame handler gives the connection loop, in its own module so that the
//! loop and both protocols' handlers can share it without importing each other.

use futures_util::future::BoxFuture;

/// What one client frame needs from the connection's loop. Publishes do not hold up the
/// frames behind them: the loop keeps several in flight and sends the replies in order.
pub(super) enum Plan {
    /// Replies that are ready now.
    Reply(Vec<String>),
    /// A publish under way; resolves to its replies.
    Later(BoxFuture<'static, Vec<String>>),
}
