//! The room directory: local room aliases (`#name:server` → room id), the set of rooms published
//! in the public room directory, the public room list itself, room summaries, and the check of
//! `m.room.canonical_alias` content against the aliases (spec client-server-api "Room aliases",
//! "Listing rooms", "Room summary").
//!
//! An alias is taken in two steps so that no two requests can win the same one: a
//! [`Reservation`] (an in-memory claim, checked together with the stored aliases under one
//! lock) and its commit (the durable write). `createRoom` reserves its alias before the room
//! exists and commits it once the room has an id, so a taken alias leaves no half-made room.
//!
//! Where the spec leaves the rules open this follows Synapse: aliases are created by members of
//! the room, deleted by their creator, a server admin or a member allowed to send
//! `m.room.canonical_alias`; the same power publishes a room; the list holds published rooms
//! that are public, knockable or world-readable and have members, largest first.
//!
//! The list is not rebuilt per request: each room's directory entry ([`RoomInfo`], read from a
//! few state events and the cached member list) is cached, and so is the sorted list of
//! published rooms built from them. The rooms write path calls [`Directory::room_changed`] once
//! an event that changes an entry is durable ([`Directory::concerns`]: the state events shown,
//! member events, redactions), which forgets the room's entry and, for a published room, the
//! list; publishing and withdrawing a room forget the list. Both caches drop a read that raced
//! such a change (`util::fresh_cache`). A request then costs a filter and a page of the list.
//! The list, its entries and the summaries live in [`list`]; aliases and publishing here.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use http::StatusCode;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedRoomAliasId, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId,
    RoomOrAliasId, UserId, api::error::ErrorKind, events::StateEventType,
};
use serde_json::Value;

mod list;

use self::list::RoomInfo;
pub use self::list::{ListPage, ListQuery};
use super::{
    accounts::Accounts,
    rooms::{NewEvent, Rooms},
};
use crate::{
    Error, Result,
    storage::{
        Batch, Db,
        tables::aliases::{AliasRecord, AliasesTable},
    },
    util::fresh_cache::FreshCache,
};

/// The state events a directory entry shows (all with the empty state key).
const SHOWN_STATE: [&str; 9] = [
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
];

/// Directory entries of rooms held (published or asked about through a summary).
const CACHED_ENTRIES: usize = 10_000;

/// The published, listable rooms in the list's order.
type Listing = Arc<Vec<Arc<RoomInfo>>>;

/// The directory service.
pub struct Directory {
    table: AliasesTable,
    server_name: OwnedServerName,
    /// Aliases claimed by a request that has not stored them yet, with the room they will point
    /// at once that is known.
    reserved: Mutex<HashMap<OwnedRoomAliasId, Option<OwnedRoomId>>>,
    /// Directory entries by room (`None`: no such room).
    entries: FreshCache<OwnedRoomId, Option<Arc<RoomInfo>>>,
    /// The public room list, before filters and pages.
    listing: FreshCache<(), Listing>,
    /// Directory entries read from the rooms (not the cache), for tests.
    entry_reads: std::sync::atomic::AtomicU64,
}

/// A claim on a free alias; released when dropped, stored by [`Reservation::commit`] (or
/// [`Reservation::queue`] in a batch; keep the claim until that batch is durable).
pub struct Reservation<'a> {
    directory: &'a Directory,
    alias: OwnedRoomAliasId,
}

impl Reservation<'_> {
    /// The alias claimed.
    pub fn alias(&self) -> &RoomAliasId {
        &self.alias
    }

    /// Stores the alias, pointing at `room_id`, made by `creator`.
    pub async fn commit(self, room_id: &RoomId, creator: &UserId) -> Result<()> {
        let record = AliasRecord {
            room_id: room_id.to_string(),
            creator: creator.to_string(),
        };
        self.directory.table.put(self.alias.as_str(), &record).await?;
        tracing::info!(alias = %self.alias, %room_id, %creator, "room alias created");
        Ok(())
    }

    /// Queues the alias, pointing at `room_id`, made by `creator`, in a batch (`createRoom`
    /// writes it with the room). Until the claim is dropped the alias counts as pointing at
    /// the room for `m.room.canonical_alias` checks, so the room's events can name it.
    pub fn queue(&self, batch: &mut Batch, room_id: &RoomId, creator: &UserId) -> Result<()> {
        let record = AliasRecord {
            room_id: room_id.to_string(),
            creator: creator.to_string(),
        };
        self.directory.table.queue_put(batch, self.alias.as_str(), &record)?;
        self.directory
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.alias.clone(), Some(room_id.to_owned()));
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.directory
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.alias);
    }
}

impl Directory {
    /// Builds the service.
    pub fn new(db: Arc<Db>, server_name: OwnedServerName) -> Self {
        Self {
            table: AliasesTable::new(db),
            server_name,
            reserved: Mutex::new(HashMap::new()),
            entries: FreshCache::new(CACHED_ENTRIES),
            listing: FreshCache::new(1),
            entry_reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether an event of `kind` (with `state_key`) changes what the directory shows of its
    /// room: a state event it shows, a member event (the member count) or a redaction (a name
    /// or topic redacted).
    pub fn concerns(kind: &str, state_key: Option<&str>) -> bool {
        match state_key {
            Some(key) => kind == "m.room.member" || (key.is_empty() && SHOWN_STATE.contains(&kind)),
            None => kind == "m.room.redaction",
        }
    }

    /// Forgets what the directory holds of a room; called once an event it
    /// [`concerns`](Self::concerns) is durable.
    pub fn room_changed(&self, room_id: &RoomId) {
        self.entries.invalidate(room_id);
        // Only a published room's change moves the list (a failed read counts as published).
        if self.table.is_published(room_id.as_str()).unwrap_or(true) {
            self.listing.invalidate(&());
        }
    }

    /// Builds `#localpart:server` for a new local alias, or 400 `M_INVALID_PARAM`.
    pub fn local_alias(&self, localpart: &str) -> Result<OwnedRoomAliasId> {
        let alias = RoomAliasId::parse(format!("#{localpart}:{}", self.server_name))
            .map_err(|e| Error::invalid_param(format!("Invalid room alias name {localpart:?}: {e}")))?;
        self.check_new(&alias)?;
        Ok(alias)
    }

    /// The rules for an alias this server creates: local, and no whitespace in the localpart
    /// (Synapse's rule; the grammar itself is checked when the alias is parsed).
    fn check_new(&self, alias: &RoomAliasId) -> Result<()> {
        if alias.server_name().as_str() != self.server_name.as_str() {
            return Err(Error::invalid_param(format!(
                "Room alias {alias} is not on this server ({})",
                self.server_name
            )));
        }
        if alias.alias().is_empty() {
            return Err(Error::invalid_param("Room alias localparts may not be empty"));
        }
        if alias.alias().chars().any(char::is_whitespace) {
            return Err(Error::invalid_param("Room aliases may not contain whitespace"));
        }
        Ok(())
    }

    /// Claims a free alias, or `None` when it is taken (stored or claimed by another request).
    pub fn reserve(&self, alias: &RoomAliasId) -> Result<Option<Reservation<'_>>> {
        self.check_new(alias)?;
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if reserved.contains_key(alias) || self.table.get(alias.as_str())?.is_some() {
            return Ok(None);
        }
        reserved.insert(alias.to_owned(), None);
        Ok(Some(Reservation {
            directory: self,
            alias: alias.to_owned(),
        }))
    }

    /// The room a local alias points at.
    pub fn resolve_local(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        self.table
            .get(alias.as_str())?
            .map(|r| OwnedRoomId::try_from(r.room_id).map_err(|e| Error::internal(e.to_string())))
            .transpose()
    }

    /// Resolves an alias to its room and the servers to join through. Remote aliases are asked
    /// of their server over federation by the callers when it is on; here (federation off)
    /// they fail as in Synapse when the other server cannot be asked (502 `M_UNKNOWN`).
    pub fn resolve(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        if alias.server_name().as_str() != self.server_name.as_str() {
            return Err(Error::new(
                StatusCode::BAD_GATEWAY,
                ErrorKind::Unknown,
                format!("Failed to fetch alias {alias}: federation is not available"),
            ));
        }
        match self.resolve_local(alias)? {
            Some(room_id) => Ok((room_id, vec![self.server_name.clone()])),
            None => Err(Error::not_found(format!("Room alias {alias} not found"))),
        }
    }

    /// A room id, or the room an alias points at.
    pub fn resolve_room(&self, target: &RoomOrAliasId) -> Result<OwnedRoomId> {
        match <&RoomId>::try_from(target) {
            Ok(room_id) => Ok(room_id.to_owned()),
            Err(alias) => Ok(self.resolve(alias)?.0),
        }
    }

    fn is_admin(accounts: &Accounts, user_id: &UserId) -> Result<bool> {
        Ok(accounts.get(user_id)?.is_some_and(|a| a.admin))
    }

    /// Whether a user may manage a room's directory entries: joined, with the power to send
    /// `m.room.canonical_alias` (Synapse's "moderator" test).
    fn may_edit(rooms: &Rooms, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        if rooms.membership(room_id, user_id)?.as_deref() != Some("join") {
            return Ok(false);
        }
        let needed = rooms.state_level(room_id, "m.room.canonical_alias")?;
        Ok(rooms.power_level(room_id, user_id)? >= needed)
    }

    /// `PUT /directory/room/{alias}`: a joined member (or a server admin) points a new local
    /// alias at a room.
    pub async fn create_alias(
        &self,
        rooms: &Rooms,
        accounts: &Accounts,
        user_id: &UserId,
        alias: &RoomAliasId,
        room_id: &RoomId,
    ) -> Result<()> {
        self.check_new(alias)?;
        if rooms.room_version(room_id)?.is_none() {
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::Unknown,
                format!("Room {room_id} does not exist"),
            ));
        }
        if rooms.membership(room_id, user_id)?.as_deref() != Some("join") && !Self::is_admin(accounts, user_id)? {
            return Err(Error::forbidden("You must be in the room to create an alias for it"));
        }
        self.create_alias_unchecked(user_id, alias, room_id).await
    }

    /// `PUT /directory/room/{alias}` by an application service for an alias of its namespace
    /// (the caller checked that): it need not be in the room, as Synapse allows.
    pub async fn create_alias_for_service(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        alias: &RoomAliasId,
        room_id: &RoomId,
    ) -> Result<()> {
        self.check_new(alias)?;
        if rooms.room_version(room_id)?.is_none() {
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::Unknown,
                format!("Room {room_id} does not exist"),
            ));
        }
        self.create_alias_unchecked(user_id, alias, room_id).await
    }

    async fn create_alias_unchecked(&self, user_id: &UserId, alias: &RoomAliasId, room_id: &RoomId) -> Result<()> {
        let reservation = self.reserve(alias)?.ok_or_else(|| {
            Error::new(
                StatusCode::CONFLICT,
                ErrorKind::Unknown,
                format!("Room alias {alias} already exists"),
            )
        })?;
        reservation.commit(room_id, user_id).await
    }

    /// `DELETE /directory/room/{alias}`: by the alias's creator, a server admin or a member
    /// allowed to send `m.room.canonical_alias`. The alias is also taken out of the room's
    /// `m.room.canonical_alias` when the user may send that (as Synapse does; the spec
    /// recommends deleting the alias even when they may not).
    pub async fn delete_alias(
        &self,
        rooms: &Rooms,
        accounts: &Accounts,
        user_id: &UserId,
        alias: &RoomAliasId,
    ) -> Result<()> {
        let not_found = || Error::not_found(format!("Room alias {alias} not found"));
        let record = self.table.get(alias.as_str())?.ok_or_else(not_found)?;
        let room_id = OwnedRoomId::try_from(record.room_id.as_str()).map_err(|e| Error::internal(e.to_string()))?;
        let allowed = record.creator == user_id.as_str()
            || Self::is_admin(accounts, user_id)?
            || Self::may_edit(rooms, &room_id, user_id)?;
        if !allowed {
            return Err(Error::forbidden("You don't have permission to delete the alias"));
        }
        self.delete_alias_unchecked(rooms, user_id, alias).await
    }

    /// `DELETE /directory/room/{alias}` by an application service for an alias of its
    /// namespace (the caller checked that): no other permission is needed, as in Synapse.
    pub async fn delete_alias_unchecked(&self, rooms: &Rooms, user_id: &UserId, alias: &RoomAliasId) -> Result<()> {
        let not_found = || Error::not_found(format!("Room alias {alias} not found"));
        let record = self.table.get(alias.as_str())?.ok_or_else(not_found)?;
        let room_id = OwnedRoomId::try_from(record.room_id.as_str()).map_err(|e| Error::internal(e.to_string()))?;
        self.table.delete(alias.as_str(), &record.room_id).await?;
        tracing::info!(%alias, %room_id, %user_id, "room alias deleted");
        self.drop_from_canonical_alias(rooms, user_id, &room_id, alias).await
    }

    async fn drop_from_canonical_alias(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        room_id: &RoomId,
        alias: &RoomAliasId,
    ) -> Result<()> {
        let Some(event) = rooms.state_event(room_id, &StateEventType::RoomCanonicalAlias, "")? else {
            return Ok(());
        };
        let Ok(CanonicalJsonValue::Object(mut content)) =
            serde_json::from_str::<CanonicalJsonValue>(event.content.get())
        else {
            return Ok(());
        };
        let gone = CanonicalJsonValue::String(alias.to_string());
        let mut changed = false;
        if content.get("alias") == Some(&gone) {
            content.remove("alias");
            changed = true;
        }
        let mut emptied = false;
        if let Some(CanonicalJsonValue::Array(alt)) = content.get_mut("alt_aliases") {
            let before = alt.len();
            alt.retain(|a| *a != gone);
            changed |= alt.len() != before;
            emptied = changed && alt.is_empty();
        }
        if emptied {
            content.remove("alt_aliases");
        }
        if !changed {
            return Ok(());
        }
        let update = NewEvent::state("m.room.canonical_alias", "", content);
        match rooms.append(room_id, user_id, update).await {
            Ok(_) => Ok(()),
            Err(e @ Error::Matrix { .. }) => {
                tracing::info!(%alias, %room_id, %user_id, "alias deleted, canonical alias left as it was: {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /rooms/{roomId}/aliases`: the room's local aliases, for its members, anyone when its
    /// history is world-readable, and server admins.
    pub fn room_aliases(
        &self,
        rooms: &Rooms,
        accounts: &Accounts,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<Vec<OwnedRoomAliasId>> {
        let allowed = rooms.membership(room_id, user_id)?.as_deref() == Some("join")
            || self.world_readable(rooms, room_id)?
            || Self::is_admin(accounts, user_id)?;
        if !allowed {
            return Err(Error::forbidden(format!(
                "{user_id} is not in the room {room_id}, and its history is not world-readable"
            )));
        }
        self.table
            .of_room(room_id.as_str())?
            .into_iter()
            .map(|a| OwnedRoomAliasId::try_from(a).map_err(|e| Error::internal(e.to_string())))
            .collect()
    }

    /// The room's local aliases, unchecked (application-service interest).
    pub fn local_aliases_of(&self, room_id: &RoomId) -> Result<Vec<String>> {
        Ok(self.table.of_room(room_id.as_str())?)
    }

    fn world_readable(&self, rooms: &Rooms, room_id: &RoomId) -> Result<bool> {
        Ok(rooms.history_visibility(room_id)? == "world_readable")
    }

    /// Checks `m.room.canonical_alias` content before it is sent (spec `PUT …/state`): `alias`
    /// and `alt_aliases` hold valid aliases (else 400 `M_INVALID_PARAM`), and each local one
    /// that is new compared with `previous` (the content it replaces) exists and points at this
    /// room (else 400 `M_BAD_ALIAS`). Aliases already there are not re-checked, so an alias
    /// deleted later does not block other edits (Synapse's rule). Remote aliases cannot be
    /// checked without federation and are accepted.
    pub fn check_canonical_alias(
        &self,
        room_id: &RoomId,
        content: &CanonicalJsonObject,
        previous: Option<&str>,
    ) -> Result<()> {
        let previous: Value = previous.and_then(|p| serde_json::from_str(p).ok()).unwrap_or_default();
        let old_alias = previous.get("alias").and_then(Value::as_str);
        let old_alt: Vec<&str> = previous
            .get("alt_aliases")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match content.get("alias") {
            None | Some(CanonicalJsonValue::Null) => {}
            Some(CanonicalJsonValue::String(alias)) if alias.is_empty() => {}
            Some(CanonicalJsonValue::String(alias)) => {
                if Some(alias.as_str()) != old_alias {
                    self.check_points_at(alias, room_id)?;
                }
            }
            Some(_) => return Err(Error::invalid_param("`alias` must be a string")),
        }
        match content.get("alt_aliases") {
            None => {}
            Some(CanonicalJsonValue::Array(items)) => {
                for item in items {
                    let CanonicalJsonValue::String(alias) = item else {
                        return Err(Error::invalid_param("`alt_aliases` must hold strings"));
                    };
                    if !old_alt.contains(&alias.as_str()) {
                        self.check_points_at(alias, room_id)?;
                    }
                }
            }
            Some(_) => return Err(Error::invalid_param("`alt_aliases` must be a list")),
        }
        Ok(())
    }

    fn check_points_at(&self, alias: &str, room_id: &RoomId) -> Result<()> {
        let alias =
            RoomAliasId::parse(alias).map_err(|e| Error::invalid_param(format!("Invalid alias {alias}: {e}")))?;
        if alias.server_name().as_str() != self.server_name.as_str() {
            return Ok(());
        }
        let claimed = self
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&alias)
            .cloned()
            .flatten();
        let target = match claimed {
            Some(room) => Some(room),
            None => self.resolve_local(&alias)?,
        };
        match target {
            Some(target) if target.as_str() == room_id.as_str() => Ok(()),
            _ => Err(Error::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::BadAlias,
                format!("The alias {alias} does not point to this room"),
            )),
        }
    }

    /// Room upgrade, step 4: the old room's local aliases and its directory listing move to the
    /// replacement room.
    pub async fn move_room(&self, from: &RoomId, to: &RoomId) -> Result<()> {
        let moved = self.table.move_room(from.as_str(), to.as_str()).await;
        self.listing.invalidate(&());
        let moved = moved?;
        tracing::info!(%from, %to, aliases = moved, "room directory entries moved");
        Ok(())
    }

    /// Publishes a room in the directory or withdraws it, without permission checks (createRoom
    /// with `visibility: public`).
    pub async fn publish(&self, room_id: &RoomId, published: bool) -> Result<()> {
        let written = self.table.set_published(room_id.as_str(), published).await;
        self.listing.invalidate(&());
        Ok(written?)
    }

    /// [`Self::publish`] in a batch (`createRoom` writes it with the room).
    pub fn queue_publish(&self, batch: &mut Batch, room_id: &RoomId) {
        self.table.queue_published(batch, room_id.as_str(), true);
    }

    /// `GET /directory/list/room/{roomId}`: whether the room is published (404 if unknown).
    pub fn is_published(&self, rooms: &Rooms, room_id: &RoomId) -> Result<bool> {
        if rooms.room_version(room_id)?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        Ok(self.table.is_published(room_id.as_str())?)
    }

    /// `PUT /directory/list/room/{roomId}`: by a server admin or a member allowed to send
    /// `m.room.canonical_alias`.
    pub async fn set_published(
        &self,
        rooms: &Rooms,
        accounts: &Accounts,
        user_id: &UserId,
        room_id: &RoomId,
        published: bool,
    ) -> Result<()> {
        if rooms.room_version(room_id)?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        if !Self::is_admin(accounts, user_id)? && !Self::may_edit(rooms, room_id, user_id)? {
            return Err(Error::forbidden(
                "You need the power to set the room's canonical alias to edit its directory entry",
            ));
        }
        self.publish(room_id, published).await?;
        tracing::info!(%room_id, %user_id, published, "room directory entry changed");
        Ok(())
    }
}
