//! Sync filters (spec "Filtering"): storing the definitions users upload, resolving the
//! `filter` parameter of `/sync` (an id or inline JSON), and the matching rules that are not
//! about room events (those are `Pdu::matches`): room lists, and type and sender lists of
//! ephemeral, account-data and presence events, with `*` wildcards in types.

use std::sync::Arc;

use ruma::{
    OwnedUserId, RoomId, UserId,
    api::client::{
        filter::{FilterDefinition, RoomEventFilter, RoomFilter},
        sync::sync_events::v3::Filter as SyncFilter,
    },
};

use crate::{
    Error, Result,
    storage::{Db, tables::filters::FiltersTable},
    util::{self, glob},
};

/// The filters service.
pub struct Filters {
    db: Arc<Db>,
    table: FiltersTable,
}

impl Filters {
    /// Builds the service.
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            table: FiltersTable::new(Arc::clone(&db)),
            db,
        }
    }

    /// Stores a filter and returns its new id.
    pub async fn create(&self, user_id: &UserId, filter: &FilterDefinition) -> Result<String> {
        validate(filter)?;
        let json = serde_json::to_vec(filter).map_err(|e| Error::internal(e.to_string()))?;
        let id = util::random_string(12);
        let mut batch = self.db.batch();
        self.table.put(&mut batch, user_id.as_str(), &id, &json);
        batch.commit().await?;
        Ok(id)
    }

    /// A stored filter of `user_id`.
    pub fn get(&self, user_id: &UserId, filter_id: &str) -> Result<Option<FilterDefinition>> {
        let Some(json) = self.table.get(user_id.as_str(), filter_id)? else {
            return Ok(None);
        };
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| Error::internal(format!("stored filter: {e}")))
    }

    /// The filter a `/sync` request names: none, inline JSON, or a stored id (400
    /// `M_INVALID_PARAM` when it is neither valid JSON nor a known id).
    pub fn resolve(&self, user_id: &UserId, filter: Option<SyncFilter>) -> Result<FilterDefinition> {
        let definition = match filter {
            None => return Ok(FilterDefinition::default()),
            Some(SyncFilter::FilterDefinition(definition)) => definition,
            Some(SyncFilter::FilterId(id)) => self
                .get(user_id, &id)?
                .ok_or_else(|| Error::invalid_param("The filter is neither a valid filter nor a known filter id"))?,
            Some(_) => return Err(Error::invalid_param("Unsupported filter")),
        };
        validate(&definition)?;
        Ok(definition)
    }
}

/// Checks what the types cannot: event type patterns are not empty.
fn validate(filter: &FilterDefinition) -> Result<()> {
    let room = &filter.room;
    let lists = [
        &filter.presence.not_types,
        &filter.account_data.not_types,
        &room.timeline.not_types,
        &room.state.not_types,
        &room.ephemeral.not_types,
        &room.account_data.not_types,
    ];
    let allow = [
        &filter.presence.types,
        &filter.account_data.types,
        &room.timeline.types,
        &room.state.types,
        &room.ephemeral.types,
        &room.account_data.types,
    ];
    let empty = lists.iter().any(|l| l.iter().any(String::is_empty))
        || allow
            .iter()
            .any(|l| l.as_ref().is_some_and(|l| l.iter().any(String::is_empty)));
    if empty {
        return Err(Error::invalid_param("Event type patterns must not be empty"));
    }
    if filter
        .event_fields
        .as_ref()
        .is_some_and(|f| f.iter().any(String::is_empty))
    {
        return Err(Error::invalid_param("event_fields entries must not be empty"));
    }
    Ok(())
}

/// Whether the room filter (and a room event filter's own room lists) lets `room_id` through.
pub fn room_allowed(filter: &RoomFilter, room_id: &RoomId) -> bool {
    let listed = |rooms: &Option<Vec<ruma::OwnedRoomId>>| rooms.as_ref().is_none_or(|r| r.iter().any(|x| x == room_id));
    listed(&filter.rooms) && !filter.not_rooms.iter().any(|r| r == room_id)
}

/// Whether a room event filter's room lists let `room_id` through.
pub fn event_filter_room(filter: &RoomEventFilter, room_id: &RoomId) -> bool {
    filter.rooms.as_ref().is_none_or(|r| r.iter().any(|x| x == room_id))
        && !filter.not_rooms.iter().any(|r| r == room_id)
}

/// Type and sender lists, the part every filter shares.
pub struct Lists<'a> {
    /// Allowed types (`None`: all).
    pub types: Option<&'a [String]>,
    /// Refused types.
    pub not_types: &'a [String],
    /// Allowed senders (`None`: all).
    pub senders: Option<&'a [OwnedUserId]>,
    /// Refused senders.
    pub not_senders: &'a [OwnedUserId],
}

impl<'a> Lists<'a> {
    /// The lists of a room event filter.
    pub fn of_room_events(f: &'a RoomEventFilter) -> Self {
        Lists {
            types: f.types.as_deref(),
            not_types: &f.not_types,
            senders: f.senders.as_deref(),
            not_senders: &f.not_senders,
        }
    }

    /// The lists of a non-room filter (presence, account data).
    pub fn of(f: &'a ruma::api::client::filter::Filter) -> Self {
        Lists {
            types: f.types.as_deref(),
            not_types: &f.not_types,
            senders: f.senders.as_deref(),
            not_senders: &f.not_senders,
        }
    }

    /// Whether an event of `kind` (sent by `sender`, if it has one) passes.
    pub fn allows(&self, kind: &str, sender: Option<&UserId>) -> bool {
        let typed = |patterns: &[String]| patterns.iter().any(|p| glob(p, kind));
        if self.types.is_some_and(|t| !typed(t)) || typed(self.not_types) {
            return false;
        }
        match sender {
            Some(sender) => {
                self.senders.is_none_or(|s| s.iter().any(|x| x == sender))
                    && !self.not_senders.iter().any(|x| x == sender)
            }
            None => true,
        }
    }
}

/// Keeps only the listed fields of an event (`event_fields`: dotted paths, `\\.` for a literal
/// dot). `None` keeps everything.
pub fn project(event: serde_json::Value, fields: Option<&[String]>) -> serde_json::Value {
    let Some(fields) = fields else { return event };
    let mut out = serde_json::Map::new();
    for field in fields {
        let path = split_path(field);
        let mut source = &event;
        let found = path.iter().all(|part| match source.get(part) {
            Some(next) => {
                source = next;
                true
            }
            None => false,
        });
        if !found {
            continue;
        }
        let mut target = &mut out;
        for (i, part) in path.iter().enumerate() {
            if i + 1 == path.len() {
                target.insert(part.clone(), source.clone());
            } else {
                let entry = target
                    .entry(part.clone())
                    .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
                if !entry.is_object() {
                    *entry = serde_json::Value::Object(serde_json::Map::new());
                }
                let serde_json::Value::Object(next) = entry else {
                    unreachable!()
                };
                target = next;
            }
        }
    }
    serde_json::Value::Object(out)
}

fn split_path(field: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                chars.next();
                parts.last_mut().expect("non-empty").push('.');
            }
            '.' => parts.push(String::new()),
            c => parts.last_mut().expect("non-empty").push(c),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_match_types_with_wildcards_and_senders() {
        let types = vec!["m.*".to_owned()];
        let not_types = vec!["m.receipt".to_owned()];
        let not_senders = vec![OwnedUserId::try_from("@bad:x").unwrap()];
        let lists = Lists {
            types: Some(&types),
            not_types: &not_types,
            senders: None,
            not_senders: &not_senders,
        };
        assert!(lists.allows("m.typing", None));
        assert!(!lists.allows("m.receipt", None));
        assert!(!lists.allows("org.custom", None));
        let bad = OwnedUserId::try_from("@bad:x").unwrap();
        assert!(!lists.allows("m.presence", Some(&bad)));
    }

    #[test]
    fn event_fields_keep_only_the_listed_paths() {
        let event = serde_json::json!({
            "type": "m.room.message",
            "sender": "@a:x",
            "content": {"body": "hi", "m.relates_to": {"rel_type": "x"}, "msgtype": "m.text"},
        });
        let fields = vec![
            "type".to_owned(),
            "content.body".to_owned(),
            "content.m\\.relates_to".to_owned(),
        ];
        assert_eq!(
            project(event.clone(), Some(&fields)),
            serde_json::json!({"type": "m.room.message", "content": {"body": "hi", "m.relates_to": {"rel_type": "x"}}})
        );
        assert_eq!(project(event.clone(), None), event);
    }
}
