//! The room's decisions: who may post, edit, delete, write documents and manage members.

use revo_events::family::room::{RoomEvent, RoomRole, RoomState};
use revo_events::EventMeta;
use uuid::Uuid;
use yrs::updates::decoder::Decode;
use yrs::Update;

use super::{Room, RoomError, Write, Written};

impl Room {
    pub(super) async fn write(
        &mut self,
        user: Uuid,
        as_owner: bool,
        meta: EventMeta,
        op: Write,
    ) -> Result<Written, RoomError> {
        if self.state.row.is_none() {
            return Err(RoomError::NotFound);
        }
        if let Write::DocUpdate { doc, update } = &op {
            // The role first: a viewer or a stranger never makes the room load a document.
            let role = if as_owner {
                Some(RoomRole::Owner)
            } else {
                self.state.role_of(&user)
            };
            if !role.is_some_and(RoomRole::can_write) {
                return Err(RoomError::Forbidden(
                    "forbidden",
                    "viewers cannot edit documents".into(),
                ));
            }
            // Checked before anything is stored: it must be a Yjs update.
            if Update::decode_v1(update).is_err() {
                return Err(RoomError::Invalid(
                    "invalid_update",
                    "not a Yjs update (v1 encoding)".into(),
                ));
            }
            let known = self.state.docs.contains_key(doc) || self.docs.contains_key(doc);
            if !known && self.state.docs.len() >= self.settings.max_docs {
                return Err(RoomError::Invalid(
                    "too_many_docs",
                    format!("a room holds at most {} documents", self.settings.max_docs),
                ));
            }
            self.load_doc(doc).await?;
            let stored = self.rooms.read().doc_bytes_of(&user);
            let quota = self.settings.max_doc_bytes_per_user;
            if stored.saturating_add(update.len() as u64) > quota {
                return Err(RoomError::Invalid(
                    "too_large",
                    format!(
                        "you have stored {stored} bytes of document updates; the limit per user is {quota} ([rooms] max_doc_bytes_per_user); nothing was stored"
                    ),
                ));
            }
            let cap = self.settings.doc_cap();
            let size = self.doc_bytes.get(doc).copied().unwrap_or(0);
            if size.saturating_add(update.len()) > cap {
                return Err(RoomError::Invalid(
                    "too_large",
                    format!(
                        "the document would pass its limit of {cap} bytes ({size} now); nothing was stored"
                    ),
                ));
            }
        }
        let mut message_id = None;
        let mut duplicate = None;
        let exact = !matches!(
            op,
            Write::Post { .. }
                | Write::Edit { .. }
                | Write::Delete { .. }
                | Write::DocUpdate { .. }
        );
        let offset = self
            .decide(meta.clone(), exact, |st| {
                let row = st.row.as_ref().ok_or(RoomError::NotFound)?;
                if row.archived {
                    return Err(RoomError::Archived);
                }
                let role = if as_owner {
                    Some(RoomRole::Owner)
                } else {
                    row.role_of(&user)
                };
                let owner = role == Some(RoomRole::Owner);
                let writer = role.is_some_and(RoomRole::can_write);
                let need_owner = || {
                    RoomError::Forbidden("forbidden", "only the room's owners may do this".into())
                };
                Ok(Some(match &op {
                    Write::Post { client_id, text } => {
                        if !writer {
                            return Err(RoomError::Forbidden(
                                "forbidden",
                                "viewers cannot post in this room".into(),
                            ));
                        }
                        if let Some((id, off)) = st.client_ids.get(&(user, client_id.clone())) {
                            duplicate = Some((*id, *off));
                            return Ok(None);
                        }
                        let id = Uuid::now_v7();
                        message_id = Some(id);
                        RoomEvent::MessagePosted {
                            message_id: id,
                            user_id: user,
                            client_id: Some(client_id.clone()),
                            text: text.clone(),
                        }
                    }
                    Write::Edit { .. } | Write::Delete { .. } if !writer => {
                        return Err(RoomError::Forbidden(
                            "forbidden",
                            "viewers cannot change messages".into(),
                        ));
                    }
                    Write::Edit {
                        message_id: m,
                        text,
                    } => {
                        let msg = st.messages.get(m).filter(|x| !x.deleted).ok_or_else(|| {
                            RoomError::Invalid(
                                "message_not_found",
                                format!(
                                    "no message {m} among this room's {} most recent",
                                    revo_events::family::room::MESSAGES_KEPT
                                ),
                            )
                        })?;
                        if msg.author != user {
                            return Err(RoomError::Forbidden(
                                "forbidden",
                                "only its author may edit a message".into(),
                            ));
                        }
                        message_id = Some(*m);
                        RoomEvent::MessageEdited {
                            message_id: *m,
                            user_id: user,
                            text: text.clone(),
                        }
                    }
                    Write::Delete { message_id: m } => {
                        let msg = st.messages.get(m).filter(|x| !x.deleted).ok_or_else(|| {
                            RoomError::Invalid(
                                "message_not_found",
                                format!(
                                    "no message {m} among this room's {} most recent",
                                    revo_events::family::room::MESSAGES_KEPT
                                ),
                            )
                        })?;
                        if msg.author != user && !owner {
                            return Err(RoomError::Forbidden(
                                "forbidden",
                                "only its author or an owner may delete a message".into(),
                            ));
                        }
                        message_id = Some(*m);
                        RoomEvent::MessageDeleted {
                            message_id: *m,
                            user_id: user,
                        }
                    }
                    Write::DocUpdate { doc, update } => {
                        if !writer {
                            return Err(RoomError::Forbidden(
                                "forbidden",
                                "viewers cannot edit documents".into(),
                            ));
                        }
                        RoomEvent::DocUpdated {
                            doc: doc.clone(),
                            user_id: user,
                            update: update.clone(),
                        }
                    }
                    Write::AddMember { user: u, role: r } => {
                        if !owner {
                            return Err(need_owner());
                        }
                        if row.members.contains_key(u) {
                            return Err(RoomError::Invalid(
                                "already_member",
                                "already a member; change the role instead".into(),
                            ));
                        }
                        RoomEvent::MemberAdded {
                            user_id: *u,
                            role: *r,
                            by: user,
                        }
                    }
                    Write::ChangeRole { user: u, role: r } => {
                        if !owner {
                            return Err(need_owner());
                        }
                        let current = row.role_of(u).ok_or_else(|| {
                            RoomError::Invalid("not_a_member", format!("{u} is not a member"))
                        })?;
                        if current == RoomRole::Owner && *r != RoomRole::Owner && owners(st) == 1 {
                            return Err(RoomError::Invalid(
                                "last_owner",
                                "a room keeps at least one owner".into(),
                            ));
                        }
                        RoomEvent::MemberRoleChanged {
                            user_id: *u,
                            role: *r,
                            by: user,
                        }
                    }
                    Write::RemoveMember { user: u } => {
                        if !owner && *u != user {
                            return Err(need_owner());
                        }
                        let current = row.role_of(u).ok_or_else(|| {
                            RoomError::Invalid("not_a_member", format!("{u} is not a member"))
                        })?;
                        if current == RoomRole::Owner && owners(st) == 1 {
                            return Err(RoomError::Invalid(
                                "last_owner",
                                "a room keeps at least one owner".into(),
                            ));
                        }
                        RoomEvent::MemberRemoved {
                            user_id: *u,
                            by: user,
                        }
                    }
                    Write::Archive => {
                        if !owner {
                            return Err(need_owner());
                        }
                        RoomEvent::Archived { by: user }
                    }
                }))
            })
            .await?;
        if let Some((id, off)) = duplicate {
            return Ok(Written {
                offset: off,
                message_id: Some(id),
                duplicate: true,
            });
        }
        let offset = offset.unwrap_or_else(|| self.state.offset());
        if let Write::DocUpdate { doc, .. } = &op {
            self.maybe_snapshot(doc, offset).await;
        }
        self.maybe_snapshot_state().await;
        Ok(Written {
            offset,
            message_id,
            duplicate: false,
        })
    }
}

fn owners(st: &RoomState) -> usize {
    st.row.as_ref().map_or(0, |r| {
        r.members
            .values()
            .filter(|r| **r == RoomRole::Owner)
            .count()
    })
}
