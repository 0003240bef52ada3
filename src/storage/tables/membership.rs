//! Membership indexed both ways: `userroom_membership` (user id SEP room id → membership) for
//! "which rooms is this user in", and `roomuser_membership` (room id SEP user id → membership)
//! for "who is in this room", both kept in the batch of the `m.room.member` event; and
//! `userroom_forgotten`, the rooms a user has forgotten, which their next membership clears.

use std::sync::Arc;

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{ROOMUSER_MEMBERSHIP, USERROOM_FORGOTTEN, USERROOM_MEMBERSHIP},
};

/// Typed access to the membership indexes.
#[derive(Clone)]
pub struct MembershipTable {
    db: Arc<Db>,
}

impl MembershipTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Queues a user's new membership of a room in both indexes (a room once forgotten is
    /// remembered again).
    pub fn queue_set(&self, batch: &mut Batch, user_id: &str, room_id: &str, membership: &str) {
        let user_room = codec::key(&[user_id.as_bytes(), room_id.as_bytes()]);
        batch.delete(USERROOM_FORGOTTEN, &user_room);
        batch.put(USERROOM_MEMBERSHIP, &user_room, membership.as_bytes());
        batch.put(
            ROOMUSER_MEMBERSHIP,
            &codec::key(&[room_id.as_bytes(), user_id.as_bytes()]),
            membership.as_bytes(),
        );
    }

    /// One user's membership of one room (a point lookup).
    pub fn get(&self, user_id: &str, room_id: &str) -> StorageResult<Option<String>> {
        let key = codec::key(&[user_id.as_bytes(), room_id.as_bytes()]);
        Ok(self
            .db
            .get(USERROOM_MEMBERSHIP, &key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
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

    fn scan(&self, table: &'static str, first: &str) -> StorageResult<Vec<(String, String)>> {
        let prefix = codec::prefix(&[first.as_bytes()]);
        Ok(self
            .db
            .scan_prefix(table, &prefix)?
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }

    /// Every room the user has a membership in, with it.
    pub fn rooms_of(&self, user_id: &str) -> StorageResult<Vec<(String, String)>> {
        self.scan(USERROOM_MEMBERSHIP, user_id)
    }

    /// Every user with a membership in the room, with it.
    pub fn members_of(&self, room_id: &str) -> StorageResult<Vec<(String, String)>> {
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
        let mut batch = db.batch();
        t.queue_set(&mut batch, "@a:x", "!r1", "join");
        t.queue_set(&mut batch, "@a:x", "!r2", "invite");
        t.queue_set(&mut batch, "@b:x", "!r1", "join");
        t.queue_set(&mut batch, "@a:x", "!r1", "leave");
        batch.commit_blocking().unwrap();
        assert_eq!(
            t.rooms_of("@a:x").unwrap(),
            vec![("!r1".into(), "leave".into()), ("!r2".into(), "invite".into())]
        );
        assert_eq!(
            t.members_of("!r1").unwrap(),
            vec![("@a:x".into(), "leave".into()), ("@b:x".into(), "join".into())]
        );
        assert_eq!(t.rooms_of("@a:x2").unwrap(), vec![]);
        assert_eq!(t.get("@a:x", "!r2").unwrap().as_deref(), Some("invite"));
        assert_eq!(t.get("@b:x", "!r2").unwrap(), None);
    }
}
