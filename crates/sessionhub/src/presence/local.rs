//! Presence of a single node.

use async_trait::async_trait;

use super::Presence;
use crate::error::PresenceError;
use crate::hub::{Hub, Online};

/// Presence of a single node: the hub's own registry.
#[derive(Debug)]
pub struct LocalPresence(pub Hub);

#[async_trait]
impl Presence for LocalPresence {
    async fn online(&self) -> Result<Online, PresenceError> {
        Ok(self.0.online())
    }
}
