//! Membership indexed both ways: `userroom_membership` (user id SEP room id) for "which rooms
//! is this user in", and `roomuser_membership` (room id SEP user id) for "who is in this room",
//! both holding the membership and the stream position of the `m.room.member` event that set
//! it, and both kept in that event's batch; and `userroom_forgotten`, the rooms a user has
//! forgotten, which their next membership clears; `userroom_remoteinvite`, invites to rooms
//! this server does not have (the event and the stripped state the inviting server sent);
//! `userroom_remoteknock`, our users' knocks on rooms this server does not have (the event, the
//! stripped state the resident server answered, that server and the room version).

use std::sync::Arc;

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{
        ROOMUSER_MEMBERSHIP, USERROOM_FORGOTTEN, USERROOM_MEMBERSHIP, USERROOM_REMOTEINVITE, USERROOM_REMOTEKNOCK,
    },
};

/// An invite to a room this server does not have.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RemoteInvite {
    /// The invite event's id.
    pub event_id: String,
    /// The invite event's canonical JSON (signed by both servers).
    pub event: Vec<u8>,
    /// The stripped state events the inviting server sent, as one JSON array.
    pub stripped: Vec<u8>,
}

/// A knock on a room this server does not have, sent through another server.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RemoteKnock {
    /// The knock event's id.
    pub event_id: String,
    /// The knock event's canonical JSON (signed by us).
    pub event: Vec<u8>,
    /// The stripped state the resident server answered (`knock_room_state`), as one JSON array.
    pub stripped: Vec<u8>,
    /// The server the knock went through (a withdrawal goes there too).
    pub via: String,
    /// The room's version, as that server said.
    pub room_version: String,
}

/// Typed access to the membership indexes.
#[derive(Clone)]
pub struct MembershipTable {
    db: Arc<Db>,
}

/// One user's membership of one room, as the index holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// `join`, `invite`, `leave`, `ban` or `knock`.
    pub membership: String,
    /// The stream position of the member event that set it.
    pub position: u64,
}

impl Membership {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = codec::u64_bytes(self.position).to_vec();
        bytes.extend_from_slice(self.membership.as_bytes());
        bytes
    }

    /// Values are the position then the membership. (Every membership is shorter than eight
    /// bytes, so a bare membership, as indexes written before positions hold, reads as
    /// position 0.)
    fn decode(bytes: &[u8]) -> Membership {
        match bytes.split_first_chunk::<8>() {
            Some((position, membership)) => Membership {
                membership: String::from_utf8_lossy(membership).into_owned(),
                position: u64::from_be_bytes(*position),
            },
            None => Membership {
                membership: String::from_utf8_lossy(bytes).into_owned(),
                position: 0,
            },
        }
    }
}

impl MembershipTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Queues a user's new membership of a room in both indexes (a room once forgotten is
    /// remembered again).
    pub fn queue_set(&self, batch: &mut Batch, user_id: &str, room_id: &str, membership: &Membership) {
        let user_room = codec::key(&[user_id.as_bytes(), room_id.as_bytes()]);
        let value = membership.encode();
        batch.delete(USERROOM_FORGOTTEN, &user_room);
        batch.put(USERROOM_MEMBERSHIP, &user_room, &value);
        batch.put(
            ROOMUSER_MEMBERSHIP,
            &codec::key(&[room_id.as_bytes(), user_id.as_bytes()]),
            &value,
        );
    }

    /// Queues a remote invite (and drops it with `None`).
    pub fn queue_remote_invite(
        &self,
        batch: &mut Batch,
        user_id: &str,
        room_id: &str,
        invite: Option<&RemoteInvite>,
    ) -> StorageResult<()> {
        let key = codec::key(&[user_id.as_bytes(), room_id.as_bytes()]);
        match invite {
            Some(invite) => batch.put(
                USERROOM_REMOTEINVITE,
                &key,
                &codec::encode(USERROOM_REMOTEINVITE, invite)?,
            ),
            None => batch.delete(USERROOM_REMOTEINVITE, &key),
        }
        Ok(())
    }

    /// A user's invite to a room this server does not have.
    pub fn remote_invite(&self, user_id: &str, room_id: &str) -> StorageResult<Option<RemoteInvite>> {
        let key = codec::key(&[user_id.as_bytes(), room_id.as_bytes()]);
        self.db
            .get(USERROOM_REMOTEINVITE, &key)?
            .map(|bytes| codec::decode(USERROOM_REMOTEINVITE, &bytes))
            .transpose()
    }

    /// Every remote invite row of a user (pending or not: the membership index says), with
    /// its room id.
    pub fn remote_invites_of(&self, user_id: &str) -> StorageResult<Vec<(String, RemoteInvite)>> {
        let prefix = codec::prefix(&[user_id.as_bytes()]);
        self.db
            .scan_prefix(USERROOM_REMOTEINVITE, &prefix)?
            .into_iter()
            .map(|(k, v)| {
                let room = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((room, codec::decode(USERROOM_REMOTEINVITE, &v)?))
            })
            .collect()
    }

    /// Queues a remote knock (and drops it with `None`).
    pub fn queue_remote_knock(
        &self,
        batch: &mut Batch,
        user_id: &str,
        room_id: &str,
        knock: Option<&RemoteKnock>,
    ) -> StorageResult<()> {
        let key = codec::key(&[user_id.as_bytes(), room_id.as_bytes()]);
        match knock {
            Some(knock) => batch.put(USERROOM_REMOTEKNOCK, &key, &codec::encode(USERROOM_REMOTEKNOCK, knock)?),
            None => batch.delete(USERROOM_REMOTEKNOCK, &key),
        }
        Ok(())
    }

    /// A user's knock on a room this server does not have.
    pub fn remote_knock(&self, user_id: &str, room_id: &str) -> StorageResult<Option<RemoteKnock>> {
        let key = codec::key(&[user_id.as_bytes(), room_id.as_bytes()]);
        self.db
            .get(USERROOM_REMOTEKNOCK, &key)?
            .map(|bytes| codec::decode(USERROOM_REMOTEKNOCK, &bytes))
            .transpose()
    }

    /// One user's membership of one room (a point lookup).
    pub fn get(&self, user_id: &str, room_id: &str) -> StorageResult<Option<Membership>> {
        let key = codec::key(&[user_id.as_bytes(), room_id.as_bytes()]);
        Ok(self.db.get(USERROOM_MEMBERSHIP, &key)?.map(|v| Membership::decode(&v)))
    }

    /// Queues forgetting a room for a user.
    pub fn queue_forget(&self, batch: &mut Batch, user_id: &str, room_id: &str) {
        batch.put(
            USERROOM_FORGOTTEN,
            &codec::key(&[user_id.as_bytes(), room_id.as_bytes()]),
            &[],
        );
    }

    /// Whether the user has forgotten the room.
    pub fn is_forgotten(&self, user_id: &str, room_id: &str) -> StorageResult<bool> {
        let key = codec::key(&[user_id.as_bytes(), room_id.as_bytes()]);
        Ok(self.db.get(USERROOM_FORGOTTEN, &key)?.is_some())
    }

    fn scan(&self, table: &'static str, first: &str) -> StorageResult<Vec<(String, Membership)>> {
        let prefix = codec::prefix(&[first.as_bytes()]);
        Ok(self
            .db
            .scan_prefix(table, &prefix)?
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                    Membership::decode(&v),
                )
            })
            .collect())
    }

    /// Every room the user has a membership in, with it.
    pub fn rooms_of(&self, user_id: &str) -> StorageResult<Vec<(String, Membership)>> {
        self.scan(USERROOM_MEMBERSHIP, user_id)
    }

    /// Every user with a membership in the room, with it.
    pub fn members_of(&self, room_id: &str) -> StorageResult<Vec<(String, Membership)>> {
        self.scan(ROOMUSER_MEMBERSHIP, room_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[test]
    fn both_directions_follow_the_latest_membership() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let t = MembershipTable::new(Arc::clone(&db));
        let m = |membership: &str, position: u64| Membership {
            membership: membership.into(),
            position,
        };
        let mut batch = db.batch();
        t.queue_set(&mut batch, "@a:x", "!r1", &m("join", 1));
        t.queue_set(&mut batch, "@a:x", "!r2", &m("invite", 2));
        t.queue_set(&mut batch, "@b:x", "!r1", &m("join", 3));
        t.queue_set(&mut batch, "@a:x", "!r1", &m("leave", 4));
        batch.commit_blocking().unwrap();
        assert_eq!(
            t.rooms_of("@a:x").unwrap(),
            vec![("!r1".into(), m("leave", 4)), ("!r2".into(), m("invite", 2))]
        );
        assert_eq!(
            t.members_of("!r1").unwrap(),
            vec![("@a:x".into(), m("leave", 4)), ("@b:x".into(), m("join", 3))]
        );
        assert_eq!(t.rooms_of("@a:x2").unwrap(), vec![]);
        assert_eq!(t.get("@a:x", "!r2").unwrap(), Some(m("invite", 2)));
        assert_eq!(t.get("@b:x", "!r2").unwrap(), None);
        // An index written before positions reads as position 0.
        assert_eq!(Membership::decode(b"join"), m("join", 0));
    }

    #[test]
    fn remote_invites_and_knocks_round_trip_and_list_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let t = MembershipTable::new(Arc::clone(&db));
        let invite = RemoteInvite {
            event_id: "$i".into(),
            event: b"{}".to_vec(),
            stripped: b"[]".to_vec(),
        };
        let knock = RemoteKnock {
            event_id: "$k".into(),
            event: b"{\"a\":1}".to_vec(),
            stripped: b"[]".to_vec(),
            via: "b.example".into(),
            room_version: "11".into(),
        };
        let mut batch = db.batch();
        t.queue_remote_invite(&mut batch, "@a:x", "!r1", Some(&invite)).unwrap();
        t.queue_remote_invite(&mut batch, "@a:x", "!r2", Some(&invite)).unwrap();
        t.queue_remote_invite(&mut batch, "@ab:x", "!r3", Some(&invite))
            .unwrap();
        t.queue_remote_knock(&mut batch, "@a:x", "!r4", Some(&knock)).unwrap();
        batch.commit_blocking().unwrap();
        let rooms: Vec<String> = t
            .remote_invites_of("@a:x")
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(rooms, ["!r1", "!r2"]);
        assert_eq!(t.remote_knock("@a:x", "!r4").unwrap(), Some(knock));
        let mut batch = db.batch();
        t.queue_remote_knock(&mut batch, "@a:x", "!r4", None).unwrap();
        batch.commit_blocking().unwrap();
        assert_eq!(t.remote_knock("@a:x", "!r4").unwrap(), None);
    }
}
