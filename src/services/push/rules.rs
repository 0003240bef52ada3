//! Each user's push rules, and the context they are evaluated in.
//!
//! The rules are stored as Synapse exposes them: the `m.push_rules` global account data,
//! `{"global": <ruleset>}`, written by the server (clients cannot set it through account
//! data), so a change reaches the user's other clients through `/sync`. What is read back is
//! merged with the current server-default rules (ruma's `Ruleset::server_default`): a
//! default rule keeps only its `enabled` and `actions` from what is stored, new defaults of a
//! later Hearth appear, and the user's own rules come in their stored order above the
//! defaults of their kind (below `.m.rule.master`). A user who never changed anything has the
//! defaults and nothing stored.
//!
//! Changes to one user's rules are serialised by a lock per user (a fixed set of shards), and
//! the parsed rules are cached until a change is durable (`util::fresh_cache`).

use std::sync::Arc;

use ruma::{
    Int, OwnedUserId, RoomId, UInt, UserId,
    events::StateEventType,
    push::{
        Action, InsertPushRuleError, NewPushRule, PushConditionPowerLevelsCtx, PushConditionRoomCtx,
        RemovePushRuleError, RuleKind, Ruleset, insert_and_move_rule,
    },
    room_version_rules::{AuthorizationRules, RoomPowerLevelsRules},
};
use serde_json::value::RawValue;

use crate::{Error, Result, services::Services};

/// The account-data type the rules are stored under.
pub const PUSH_RULES: &str = "m.push_rules";

/// Lock shards for rule changes.
pub(super) const RULE_LOCKS: usize = 64;

fn unknown(message: impl Into<String>) -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ruma::api::error::ErrorKind::Unknown,
        message,
    )
}

/// The rule kinds the API serves (unknown kinds are refused as Synapse refuses them: 400
/// `M_UNRECOGNIZED`). MSC4306's `postcontent` holds only its server defaults, which may be read,
/// enabled and given actions; [`Services::set_push_rule`] refuses new rules there.
fn check_kind(kind: &RuleKind) -> Result<()> {
    match kind {
        RuleKind::Override
        | RuleKind::Underride
        | RuleKind::Sender
        | RuleKind::Room
        | RuleKind::Content
        | RuleKind::PostContent => Ok(()),
        _ => Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::Unrecognized,
            "Unrecognized push rule kind",
        )),
    }
}

fn rule_not_found() -> Error {
    Error::not_found("The push rule was not found.")
}

/// The server defaults for `user_id` with what `stored` changed merged in (see the module
/// notes).
pub fn merge(user_id: &UserId, stored: &Ruleset) -> Ruleset {
    let mut out = Ruleset::server_default(user_id);
    macro_rules! merge_kind {
        ($field:ident, $kind:expr, $base:expr) => {{
            let mut next = $base.min(out.$field.len());
            for rule in stored.$field.iter() {
                if rule.default {
                    let _ = out.set_enabled($kind, &rule.rule_id, rule.enabled);
                    let _ = out.set_actions($kind, &rule.rule_id, rule.actions.clone());
                } else if !AsRef::<str>::as_ref(&rule.rule_id).starts_with('.') {
                    let _ = insert_and_move_rule(&mut out.$field, rule.clone(), next, None, None);
                    next += 1;
                }
            }
        }};
    }
    // `.m.rule.master` stays first among the overrides.
    let master = usize::from(out.override_.first().is_some_and(|r| r.rule_id == ".m.rule.master"));
    merge_kind!(override_, RuleKind::Override, master);
    merge_kind!(content, RuleKind::Content, 0);
    merge_kind!(postcontent, RuleKind::PostContent, 0);
    merge_kind!(room, RuleKind::Room, 0);
    merge_kind!(sender, RuleKind::Sender, 0);
    merge_kind!(underride, RuleKind::Underride, 0);
    out
}

/// Whether an event's content says it mentions the whole room (`m.mentions.room`): only then
/// do its push rules need the sender's power levels.
pub fn mentions_room(content: &RawValue) -> bool {
    #[derive(serde::Deserialize)]
    struct Content {
        #[serde(rename = "m.mentions")]
        mentions: Option<Mentions>,
    }
    #[derive(serde::Deserialize)]
    struct Mentions {
        #[serde(default)]
        room: bool,
    }
    serde_json::from_str::<Content>(content.get())
        .ok()
        .and_then(|c| c.mentions)
        .is_some_and(|m| m.room)
}

/// The part of a push-rule context that is the same for every recipient of an event
/// ([`Services::room_push_context`]).
pub struct RoomPushContext {
    joined: UInt,
    power: PushConditionPowerLevelsCtx,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    global: Ruleset,
}

impl Services {
    /// A user's push rules (the defaults when they changed none).
    pub fn push_rules(&self, user_id: &UserId) -> Result<Arc<Ruleset>> {
        self.push.rules.get_or_read(
            user_id,
            || user_id.to_owned(),
            || self.read_push_rules(user_id).map(Arc::new),
        )
    }

    fn read_push_rules(&self, user_id: &UserId) -> Result<Ruleset> {
        let stored = self
            .account_data
            .get(user_id, None, PUSH_RULES)?
            .and_then(|raw| serde_json::from_str::<Stored>(raw.get()).ok());
        Ok(match stored {
            Some(stored) => merge(user_id, &stored.global),
            None => Ruleset::server_default(user_id),
        })
    }

    /// Changes a user's rules with `change` under their lock, stores them and forgets the
    /// cached ones.
    async fn change_push_rules(&self, user_id: &UserId, change: impl FnOnce(&mut Ruleset) -> Result<()>) -> Result<()> {
        let shard = {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            user_id.as_str().hash(&mut h);
            (h.finish() as usize) % RULE_LOCKS
        };
        let _guard = self.push.rule_locks[shard].lock().await;
        let mut rules = self.read_push_rules(user_id)?;
        change(&mut rules)?;
        let json = serde_json::to_string(&Stored { global: rules })
            .map_err(|e| Error::internal(format!("push rules: {e}")))?;
        let raw = RawValue::from_string(json).map_err(|e| Error::internal(format!("push rules: {e}")))?;
        let written = self.account_data.set_managed(user_id, None, PUSH_RULES, &raw).await;
        self.push.rules.invalidate(user_id);
        written
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}`: adds or replaces a user-defined rule.
    pub async fn set_push_rule(
        &self,
        user_id: &UserId,
        rule: NewPushRule,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<()> {
        check_kind(&rule.kind())?;
        if rule.kind() == RuleKind::PostContent {
            // MSC4306: "clients MUST NOT be able to create custom rules with this kind".
            return Err(Error::invalid_param("Rules of kind postcontent cannot be created"));
        }
        self.change_push_rules(user_id, |rules| {
            rules.insert(rule, after, before).map_err(|e| match e {
                InsertPushRuleError::ServerDefaultRuleId => unknown("cannot add new rule_ids that start with '.'"),
                InsertPushRuleError::InvalidRuleId => unknown("rule_id may not contain slashes"),
                InsertPushRuleError::RelativeToServerDefaultRule => {
                    unknown("before/after may not name a server-default rule")
                }
                InsertPushRuleError::UnknownRuleId => unknown(format!(
                    "before/after rule not found: {}",
                    before.or(after).unwrap_or_default()
                )),
                InsertPushRuleError::BeforeHigherThanAfter => {
                    unknown("the before rule has a higher priority than the after rule")
                }
                other => unknown(other.to_string()),
            })
        })
        .await
    }

    /// `DELETE /pushrules/global/{kind}/{ruleId}`: removes a user-defined rule (server-default
    /// rules cannot be removed: 404 as in Synapse, where they are not stored).
    pub async fn delete_push_rule(&self, user_id: &UserId, kind: RuleKind, rule_id: &str) -> Result<()> {
        check_kind(&kind)?;
        self.change_push_rules(user_id, |rules| {
            rules.remove(kind, rule_id).map_err(|e| match e {
                RemovePushRuleError::ServerDefault | RemovePushRuleError::NotFound => rule_not_found(),
                other => unknown(other.to_string()),
            })
        })
        .await
    }

    /// One rule of a user.
    pub fn push_rule(&self, user_id: &UserId, kind: RuleKind, rule_id: &str) -> Result<ruma::push::AnyPushRule> {
        check_kind(&kind)?;
        let rules = self.push_rules(user_id)?;
        rules
            .get(kind, rule_id)
            .map(|r| r.to_owned())
            .ok_or_else(rule_not_found)
    }

    /// `PUT …/enabled`.
    pub async fn set_push_rule_enabled(
        &self,
        user_id: &UserId,
        kind: RuleKind,
        rule_id: &str,
        enabled: bool,
    ) -> Result<()> {
        check_kind(&kind)?;
        self.change_push_rules(user_id, |rules| {
            rules.set_enabled(kind, rule_id, enabled).map_err(|_| rule_not_found())
        })
        .await
    }

    /// `PUT …/actions`.
    pub async fn set_push_rule_actions(
        &self,
        user_id: &UserId,
        kind: RuleKind,
        rule_id: &str,
        actions: Vec<Action>,
    ) -> Result<()> {
        check_kind(&kind)?;
        self.change_push_rules(user_id, |rules| {
            rules.set_actions(kind, rule_id, actions).map_err(|_| rule_not_found())
        })
        .await
    }

    /// The context `user_id`'s rules are evaluated in for an event of `sender` in a room:
    /// member count, the user's display name in the room and the sender's power to notify the
    /// room (`@room`).
    pub fn push_context(&self, room_id: &RoomId, user_id: &UserId, sender: &UserId) -> Result<PushConditionRoomCtx> {
        let shared = self.room_push_context(room_id, sender, self.rooms.members(room_id)?.count("join"))?;
        let display_name = self
            .rooms
            .state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?
            .and_then(|m| m.content_str("displayname"));
        Ok(self.user_push_context(&shared, room_id, user_id, display_name))
    }

    /// What the push contexts of every recipient of one event of `sender` share (`joined`
    /// members, the sender's power to notify the room): read once per event, not per recipient.
    pub fn room_push_context(&self, room_id: &RoomId, sender: &UserId, joined: usize) -> Result<RoomPushContext> {
        Ok(RoomPushContext {
            joined: UInt::try_from(joined as u64).unwrap_or(UInt::MAX),
            power: self.push_power_levels(room_id, sender)?,
        })
    }

    /// One recipient's context from the shared part and their display name in the room (their
    /// localpart when they have none).
    pub fn user_push_context(
        &self,
        shared: &RoomPushContext,
        room_id: &RoomId,
        user_id: &UserId,
        display_name: Option<String>,
    ) -> PushConditionRoomCtx {
        let display_name = display_name.unwrap_or_else(|| user_id.localpart().to_owned());
        self.thread_subs.push_lookup(
            PushConditionRoomCtx::new(room_id.to_owned(), shared.joined, user_id.to_owned(), display_name)
                .with_power_levels(shared.power.clone()),
        )
    }

    /// What the `sender_notification_permission` condition (`@room`) needs: the sender's
    /// level and the room's `notifications` levels.
    pub fn push_power_levels(&self, room_id: &RoomId, sender: &UserId) -> Result<PushConditionPowerLevelsCtx> {
        let rooms = &self.rooms;
        let notifications = rooms
            .state_event(room_id, &StateEventType::RoomPowerLevels, "")?
            .and_then(|pl| {
                #[derive(serde::Deserialize)]
                struct Levels {
                    #[serde(default)]
                    notifications: Option<ruma::power_levels::NotificationPowerLevels>,
                }
                serde_json::from_str::<Levels>(pl.content.get()).ok()?.notifications
            })
            .unwrap_or_default();
        let sender_level = rooms.power_level(room_id, sender).unwrap_or(0);
        let sender_level = Int::new(sender_level.min(i64::from(Int::MAX))).unwrap_or(Int::MAX);
        Ok(PushConditionPowerLevelsCtx::new(
            [(sender.to_owned(), sender_level)].into_iter().collect(),
            Int::from(0),
            notifications,
            RoomPowerLevelsRules::new(&AuthorizationRules::V1, std::iter::empty::<OwnedUserId>()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use ruma::{
        push::{NewSimplePushRule, RuleKind},
        user_id,
    };

    use super::*;

    #[test]
    fn stored_changes_merge_over_the_defaults() {
        let user = user_id!("@a:x");
        let mut stored = Ruleset::server_default(user);
        stored
            .insert(
                NewPushRule::Room(NewSimplePushRule::new(ruma::owned_room_id!("!r:x"), vec![])),
                None,
                None,
            )
            .unwrap();
        stored
            .set_enabled(RuleKind::Override, ".m.rule.suppress_notices", false)
            .unwrap();
        // A stored default ruma no longer has is dropped.
        let merged = merge(user, &stored);
        assert!(merged.room.iter().any(|r| r.rule_id == "!r:x"));
        assert!(
            !merged
                .get(RuleKind::Override, ".m.rule.suppress_notices")
                .unwrap()
                .enabled()
        );
        assert_eq!(merged.override_.first().unwrap().rule_id, ".m.rule.master");
        let json = serde_json::to_string(&merged).unwrap();
        let back: Ruleset = serde_json::from_str(&json).unwrap();
        assert_eq!(merge(user, &back).room.len(), merged.room.len());
    }
}
