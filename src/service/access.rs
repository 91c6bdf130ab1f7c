//! Who may do what. With authentication on, every use case has an acting alias: an alias posts
//! only as itself and reads only rooms it is a member of. In dev mode (`--no-auth`) the seed's
//! endpoints may act without one; an alias that does present a token is held to the same rules.

use super::ChatService;
use super::error::ChatError;
use crate::model::Alias;
use crate::room::ChatRoom;

impl ChatService {
    /// The acting alias, or `Unauthorized` when one is needed and missing.
    pub(super) fn actor<'a>(
        &self,
        actor: Option<&'a Alias>,
    ) -> Result<Option<&'a Alias>, ChatError> {
        match actor {
            None if self.inner.config.require_auth => Err(ChatError::Unauthorized(
                "this needs `Authorization: Bearer <token>` (register with POST /api/v1/users)"
                    .into(),
            )),
            actor => Ok(actor),
        }
    }

    /// Nobody posts as someone else.
    pub(super) fn may_post_as(&self, actor: Option<&Alias>, from: &Alias) -> Result<(), ChatError> {
        match self.actor(actor)? {
            Some(me) if me != from => {
                Err(ChatError::Forbidden(format!("your token is not {from}'s")))
            }
            _ => Ok(()),
        }
    }

    /// Nobody reads a room they are not a member of.
    pub(super) async fn may_read(
        &self,
        actor: Option<&Alias>,
        room: &ChatRoom,
    ) -> Result<(), ChatError> {
        match self.actor(actor)? {
            Some(me) if !self.is_member(room, me).await? => Err(ChatError::NotAMember {
                room: room.name().clone(),
                alias: me.clone(),
            }),
            _ => Ok(()),
        }
    }
}
