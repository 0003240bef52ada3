//! State resolution v1: the algorithm of room version 1 (spec: `rooms/v1.md`, "State
//! resolution"), which ruma-state-res does not implement; this module owns it and nothing else.
//! Room version 2 introduced state resolution v2, which (with v2.1 from version 12) is ruma's
//! `state_res::resolve`.
//!
//! The resolved state `R` starts as the unconflicted state (every `(type, state_key)` that all
//! the states agree on, or that only some of them have). Then the conflicts are resolved in
//! passes, each against `R` as it stood when the pass began:
//!
//! 1. `m.room.power_levels`, then 2. `m.room.join_rules`, then 3. `m.room.member` (each key on
//!    its own): the candidates ordered by ascending depth, then descending SHA-1 of the event id;
//!    the first is taken, then each next one replaces it while the authorization rules allow it
//!    in `R` with the one taken so far; the first that is not allowed ends the walk.
//! 4. Every other conflicted key: the candidates ordered by descending depth, then ascending
//!    SHA-1 of the event id; the first one the authorization rules allow in `R` wins. When none
//!    is allowed, the last one (least depth) is taken.
//!
//! The spec leaves open what "stop" means when several keys of one pass conflict and what step 4
//! does when nothing passes; both follow Synapse (`synapse/state/v1.py`), the implementation every
//! v1 room in the wild was resolved by: each key of a pass is resolved against the same `R`,
//! and step 4 falls back to its last candidate. A conflicted event that cannot be fetched takes
//! no part (a key left with one candidate is then unconflicted). The authorization checks are
//! ruma-state-res's state-dependent rules of the room version (`rules.authorization`), never
//! written here.

use std::{borrow::Borrow, collections::BTreeSet};

use ruma::{
    EventId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::AuthorizationRules,
    state_res::{self, Event, StateMap},
};

/// An event as state resolution v1 reads it: ruma's [`Event`] and its depth (which ruma's trait
/// does not carry).
pub trait WithDepth: Event {
    /// The event's `depth`.
    fn depth(&self) -> u64;
}

impl WithDepth for super::pdu::Pdu {
    fn depth(&self) -> u64 {
        u64::from(self.depth)
    }
}

/// Resolves `state_maps` by state resolution v1. `fetch` gives the events the resolution reads:
/// the conflicted events and the events of the resolved state the authorization rules look at.
pub fn resolve<E>(
    rules: &AuthorizationRules,
    state_maps: &[StateMap<E::Id>],
    fetch: impl Fn(&EventId) -> Option<E>,
) -> StateMap<E::Id>
where
    E: WithDepth + Clone,
{
    if state_maps.len() < 2 {
        return state_maps.first().cloned().unwrap_or_default();
    }
    let (mut resolved, conflicted) = separate(state_maps);
    // The candidates of each conflicted key (those that can be had).
    let mut candidates: Vec<((StateEventType, String), Vec<E>)> = Vec::with_capacity(conflicted.len());
    for (key, ids) in conflicted {
        let mut events: Vec<E> = ids.iter().filter_map(|id| fetch(id.borrow())).collect();
        match events.len() {
            0 => {}
            1 => {
                if let Some(event) = events.pop() {
                    resolved.insert(key, event.event_id().clone());
                }
            }
            _ => candidates.push((key, events)),
        }
    }
    if candidates.is_empty() {
        return resolved;
    }
    // Keys in a fixed order, so the result never depends on hashing.
    candidates.sort_by(|(a, _), (b, _)| (a.0.to_string(), &a.1).cmp(&(b.0.to_string(), &b.1)));

    let passes: [fn(&StateEventType) -> bool; 3] = [
        |kind| *kind == StateEventType::RoomPowerLevels,
        |kind| *kind == StateEventType::RoomJoinRules,
        |kind| *kind == StateEventType::RoomMember,
    ];
    let mut done = vec![false; candidates.len()];
    for in_pass in passes {
        let mut winners = Vec::new();
        for (index, (key, events)) in candidates.iter().enumerate() {
            if done[index] || !in_pass(&key.0) {
                continue;
            }
            done[index] = true;
            winners.push((key.clone(), resolve_auth_events(rules, events, &resolved, &fetch)));
        }
        resolved.extend(winners);
    }
    let mut winners = Vec::new();
    for (index, (key, events)) in candidates.iter().enumerate() {
        if !done[index] {
            winners.push((key.clone(), resolve_normal_events(rules, events, &resolved, &fetch)));
        }
    }
    resolved.extend(winners);
    resolved
}

/// The unconflicted state (keys all the maps having them agree on) and the conflicted keys with
/// their distinct event ids.
#[allow(clippy::type_complexity)]
fn separate<Id: Clone + Ord>(state_maps: &[StateMap<Id>]) -> (StateMap<Id>, StateMap<BTreeSet<Id>>) {
    let mut unconflicted = StateMap::new();
    let mut conflicted: StateMap<BTreeSet<Id>> = StateMap::new();
    for map in state_maps {
        for (key, id) in map {
            if let Some(ids) = conflicted.get_mut(key) {
                ids.insert(id.clone());
                continue;
            }
            match unconflicted.get(key) {
                None => {
                    unconflicted.insert(key.clone(), id.clone());
                }
                Some(existing) if existing != id => {
                    let existing = unconflicted.remove(key).unwrap_or_else(|| id.clone());
                    conflicted.insert(key.clone(), [existing, id.clone()].into());
                }
                Some(_) => {}
            }
        }
    }
    (unconflicted, conflicted)
}

/// SHA-1 of an event id (the tie-break between candidates of the same depth).
fn sha1(event_id: &EventId) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, event_id.as_bytes())
}

/// The candidates ordered by descending depth, then ascending SHA-1 of the event id.
fn ordered<E: WithDepth>(events: &[E]) -> Vec<&E> {
    let mut keyed: Vec<(u64, ring::digest::Digest, &E)> = events
        .iter()
        .map(|e| (e.depth(), sha1(e.event_id().borrow()), e))
        .collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.as_ref().cmp(b.1.as_ref())));
    keyed.into_iter().map(|(_, _, e)| e).collect()
}

/// Whether the authorization rules allow `event` in the state `state`, with `extra` (an event
/// taken so far for its own key) over it.
fn allowed<E: Event + Clone>(
    rules: &AuthorizationRules,
    event: &E,
    state: &StateMap<E::Id>,
    extra: Option<&E>,
    fetch: &impl Fn(&EventId) -> Option<E>,
) -> bool {
    let lookup = |kind: &StateEventType, state_key: &str| -> Option<E> {
        if let Some(extra) = extra
            && extra.state_key() == Some(state_key)
            && *extra.event_type() == TimelineEventType::from(kind.to_string())
        {
            return Some(extra.clone());
        }
        state
            .get(&(kind.clone(), state_key.to_owned()))
            .and_then(|id| fetch(id.borrow()))
    };
    state_res::check_state_dependent_auth_rules(rules, event, lookup).is_ok()
}

/// Steps 1–3 for one key: from the least deep candidate on, each next one replaces the one taken
/// while it is allowed.
fn resolve_auth_events<E>(
    rules: &AuthorizationRules,
    events: &[E],
    state: &StateMap<E::Id>,
    fetch: &impl Fn(&EventId) -> Option<E>,
) -> E::Id
where
    E: WithDepth + Clone,
{
    let mut order = ordered(events);
    order.reverse();
    let mut taken = order[0];
    for event in &order[1..] {
        if !allowed(rules, *event, state, Some(taken), fetch) {
            break;
        }
        taken = event;
    }
    taken.event_id().clone()
}

/// Step 4 for one key: the first candidate allowed, else the last.
fn resolve_normal_events<E>(
    rules: &AuthorizationRules,
    events: &[E],
    state: &StateMap<E::Id>,
    fetch: &impl Fn(&EventId) -> Option<E>,
) -> E::Id
where
    E: WithDepth + Clone,
{
    let order = ordered(events);
    order
        .iter()
        .find(|event| allowed(rules, **event, state, None, fetch))
        .or(order.last())
        .map(|event| event.event_id().clone())
        .unwrap_or_else(|| events[0].event_id().clone())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ruma::{
        EventId, OwnedEventId, events::StateEventType, room_version_rules::AuthorizationRules, state_res::StateMap,
    };
    use serde_json::{Value, json};

    use super::{resolve, sha1};
    use crate::services::rooms::pdu::Pdu;

    const ROOM: &str = "!room:a.example";
    const ALICE: &str = "@alice:a.example";
    const BOB: &str = "@bob:b.example";
    const CAROL: &str = "@carol:b.example";

    /// A room's events by id, v1 format (`[id, hashes]` pairs in `prev_events`/`auth_events`).
    #[derive(Default)]
    struct Room {
        events: HashMap<OwnedEventId, Pdu>,
    }

    impl Room {
        fn add(&mut self, id: &str, sender: &str, kind: &str, key: &str, content: Value, depth: u64) -> OwnedEventId {
            let id = EventId::parse(id).unwrap();
            let prev: Vec<Value> = self
                .events
                .keys()
                .take(1)
                .map(|p| json!([p.as_str(), {"sha256": "x"}]))
                .collect();
            let pdu = json!({
                "event_id": id.as_str(), "room_id": ROOM, "sender": sender, "type": kind,
                "state_key": key, "content": content, "depth": depth, "origin_server_ts": depth,
                "prev_events": prev, "auth_events": [], "hashes": {"sha256": "x"}, "signatures": {},
            });
            let parsed = Pdu::parse(id.clone(), pdu.to_string().as_bytes()).unwrap();
            self.events.insert(id.clone(), parsed);
            id
        }

        fn resolve(&self, maps: &[StateMap<OwnedEventId>]) -> StateMap<OwnedEventId> {
            resolve(&AuthorizationRules::V1, maps, |id: &EventId| {
                self.events.get(id).cloned()
            })
        }
    }

    fn key(kind: &str, state_key: &str) -> (StateEventType, String) {
        (StateEventType::from(kind), state_key.to_owned())
    }

    fn power(users: Value) -> Value {
        json!({"users": users, "users_default": 0, "events": {"m.room.power_levels": 100}, "state_default": 50,
               "ban": 50, "kick": 50, "redact": 50, "invite": 0, "events_default": 0})
    }

    /// A room of alice (100) where bob and carol joined: its state map.
    fn base(room: &mut Room) -> StateMap<OwnedEventId> {
        let mut state = StateMap::new();
        let create = room.add(
            "$create:a.example",
            ALICE,
            "m.room.create",
            "",
            json!({"creator": ALICE}),
            1,
        );
        state.insert(key("m.room.create", ""), create);
        let alice = room.add(
            "$alice:a.example",
            ALICE,
            "m.room.member",
            ALICE,
            json!({"membership": "join"}),
            2,
        );
        state.insert(key("m.room.member", ALICE), alice);
        let power = room.add(
            "$power:a.example",
            ALICE,
            "m.room.power_levels",
            "",
            power(json!({ALICE: 100, BOB: 50})),
            3,
        );
        state.insert(key("m.room.power_levels", ""), power);
        let rules = room.add(
            "$rules:a.example",
            ALICE,
            "m.room.join_rules",
            "",
            json!({"join_rule": "public"}),
            4,
        );
        state.insert(key("m.room.join_rules", ""), rules);
        for (n, user) in [BOB, CAROL].into_iter().enumerate() {
            let id = format!("$join{n}:b.example");
            let join = room.add(&id, user, "m.room.member", user, json!({"membership": "join"}), 5);
            state.insert(key("m.room.member", user), join);
        }
        state
    }

    fn with(
        state: &StateMap<OwnedEventId>,
        entries: &[((StateEventType, String), &OwnedEventId)],
    ) -> StateMap<OwnedEventId> {
        let mut state = state.clone();
        for (key, id) in entries {
            state.insert(key.clone(), (*id).clone());
        }
        state
    }

    #[test]
    fn one_state_is_its_own_resolution_and_unconflicted_state_is_kept() {
        let mut room = Room::default();
        let state = base(&mut room);
        assert_eq!(room.resolve(std::slice::from_ref(&state)), state);
        // A key only one side has, and keys both sides agree on, are kept as they are.
        let name = room.add("$name:b.example", CAROL, "m.room.name", "", json!({"name": "n"}), 6);
        let named = with(&state, &[(key("m.room.name", ""), &name)]);
        let resolved = room.resolve(&[state.clone(), named.clone()]);
        assert_eq!(resolved, named);
        // Even an entry no rule would allow now (carol has no power to name the room).
        assert_eq!(resolved[&key("m.room.name", "")], name);
    }

    #[test]
    fn a_power_levels_conflict_is_resolved_by_the_authorization_rules() {
        let mut room = Room::default();
        let state = base(&mut room);
        // Bob (50) tries to make himself 100 deeper in the DAG than alice's change: not allowed
        // over alice's, so alice's stays although it is less deep.
        let by_alice = room.add(
            "$pa:a.example",
            ALICE,
            "m.room.power_levels",
            "",
            power(json!({ALICE: 100, BOB: 40})),
            6,
        );
        let by_bob = room.add(
            "$pb:b.example",
            BOB,
            "m.room.power_levels",
            "",
            power(json!({ALICE: 100, BOB: 100})),
            9,
        );
        let pl = key("m.room.power_levels", "");
        let resolved = room.resolve(&[
            with(&state, &[(pl.clone(), &by_alice)]),
            with(&state, &[(pl.clone(), &by_bob)]),
        ]);
        assert_eq!(resolved[&pl], by_alice);
        // Alice's deeper change over bob's (adding carol, not touching bob's 100) is allowed: the
        // deeper one wins.
        let later = room.add(
            "$pc:a.example",
            ALICE,
            "m.room.power_levels",
            "",
            power(json!({ALICE: 100, BOB: 100, CAROL: 1})),
            10,
        );
        let resolved = room.resolve(&[
            with(&state, &[(pl.clone(), &by_bob)]),
            with(&state, &[(pl.clone(), &later)]),
        ]);
        assert_eq!(resolved[&pl], later);
        // The other keys are the unconflicted state.
        assert_eq!(resolved[&key("m.room.member", BOB)], state[&key("m.room.member", BOB)]);
    }

    #[test]
    fn a_member_conflict_takes_the_allowed_change() {
        let mut room = Room::default();
        let state = base(&mut room);
        let member = key("m.room.member", BOB);
        let join = state[&member].clone();
        // Carol (0) cannot kick bob: the join stays.
        let kick = room.add(
            "$kick:b.example",
            CAROL,
            "m.room.member",
            BOB,
            json!({"membership": "leave"}),
            7,
        );
        let resolved = room.resolve(&[state.clone(), with(&state, &[(member.clone(), &kick)])]);
        assert_eq!(resolved[&member], join);
        // Alice (100) can ban him: the ban is taken.
        let ban = room.add(
            "$ban:a.example",
            ALICE,
            "m.room.member",
            BOB,
            json!({"membership": "ban"}),
            7,
        );
        let resolved = room.resolve(&[state.clone(), with(&state, &[(member.clone(), &ban)])]);
        assert_eq!(resolved[&member], ban);
        // Power levels are resolved first and the member conflict in their result: alice's
        // ban holds under her new power levels.
        let pl = key("m.room.power_levels", "");
        let demoted = room.add(
            "$demote:a.example",
            ALICE,
            "m.room.power_levels",
            "",
            power(json!({ALICE: 100})),
            8,
        );
        let resolved = room.resolve(&[
            with(&state, &[(pl.clone(), &demoted)]),
            with(&state, &[(member.clone(), &ban)]),
        ]);
        assert_eq!((&resolved[&pl], &resolved[&member]), (&demoted, &ban));
    }

    #[test]
    fn members_are_resolved_against_the_resolved_power_levels() {
        let mut room = Room::default();
        let state = base(&mut room);
        let (pl, carol) = (key("m.room.power_levels", ""), key("m.room.member", CAROL));
        // One side keeps bob at 50 and has him kick carol; the other demotes him (deeper, so
        // its power levels win). Under them bob may not kick: carol stays joined.
        let keep = room.add(
            "$keep:a.example",
            ALICE,
            "m.room.power_levels",
            "",
            power(json!({ALICE: 100, BOB: 50, CAROL: 0})),
            6,
        );
        let demote = room.add(
            "$demote:a.example",
            ALICE,
            "m.room.power_levels",
            "",
            power(json!({ALICE: 100, BOB: 0})),
            7,
        );
        let kick = room.add(
            "$kick:b.example",
            BOB,
            "m.room.member",
            CAROL,
            json!({"membership": "leave"}),
            8,
        );
        let kicking = with(&state, &[(pl.clone(), &keep), (carol.clone(), &kick)]);
        let demoting = with(&state, &[(pl.clone(), &demote)]);
        let resolved = room.resolve(&[kicking.clone(), demoting]);
        assert_eq!(resolved[&pl], demote);
        assert_eq!(resolved[&carol], state[&carol]);
        // Without the demotion the kick is allowed.
        let resolved = room.resolve(&[kicking, state.clone()]);
        assert_eq!((&resolved[&pl], &resolved[&carol]), (&keep, &kick));
    }

    #[test]
    fn other_conflicts_go_by_depth_then_sha1_of_the_event_id() {
        let mut room = Room::default();
        let state = base(&mut room);
        let topic = key("m.room.topic", "");
        let at = |room: &mut Room, id: &str, depth: u64| {
            room.add(id, ALICE, "m.room.topic", "", json!({"topic": id}), depth)
        };
        // The deepest allowed one wins.
        let shallow = at(&mut room, "$t1:a.example", 6);
        let deep = at(&mut room, "$t2:a.example", 8);
        let resolved = room.resolve(&[
            with(&state, &[(topic.clone(), &shallow)]),
            with(&state, &[(topic.clone(), &deep)]),
        ]);
        assert_eq!(resolved[&topic], deep);
        // At the same depth, the lowest SHA-1 of the event id.
        let ids: Vec<OwnedEventId> = (0..4)
            .map(|n| at(&mut room, &format!("$same{n}:a.example"), 7))
            .collect();
        let maps: Vec<StateMap<OwnedEventId>> = ids.iter().map(|id| with(&state, &[(topic.clone(), id)])).collect();
        let lowest = ids
            .iter()
            .min_by(|a, b| sha1(a).as_ref().cmp(sha1(b).as_ref()))
            .unwrap();
        assert_eq!(&room.resolve(&maps)[&topic], lowest);
        // The order of the maps does not matter.
        let reversed: Vec<_> = maps.iter().rev().cloned().collect();
        assert_eq!(&room.resolve(&reversed)[&topic], lowest);
        // A deeper one that is not allowed (carol has no power) loses to an allowed one.
        let carols = room.add("$t3:b.example", CAROL, "m.room.topic", "", json!({"topic": "c"}), 20);
        let resolved = room.resolve(&[
            with(&state, &[(topic.clone(), &carols)]),
            with(&state, &[(topic.clone(), &shallow)]),
        ]);
        assert_eq!(resolved[&topic], shallow);
        // None allowed: the least deep (the last in the order) is taken.
        let carols_early = room.add("$t4:b.example", CAROL, "m.room.topic", "", json!({"topic": "d"}), 6);
        let resolved = room.resolve(&[
            with(&state, &[(topic.clone(), &carols)]),
            with(&state, &[(topic.clone(), &carols_early)]),
        ]);
        assert_eq!(resolved[&topic], carols_early);
    }

    #[test]
    fn power_conflicts_go_by_ascending_depth_then_descending_sha1() {
        let mut room = Room::default();
        let state = base(&mut room);
        let pl = key("m.room.power_levels", "");
        // Two changes by alice at the same depth, each allowed over the other: the walk starts at
        // the highest SHA-1 and ends at the lowest.
        let a = room.add(
            "$pl-a:a.example",
            ALICE,
            "m.room.power_levels",
            "",
            power(json!({ALICE: 100, BOB: 1})),
            6,
        );
        let b = room.add(
            "$pl-b:a.example",
            ALICE,
            "m.room.power_levels",
            "",
            power(json!({ALICE: 100, BOB: 2})),
            6,
        );
        let lowest = if sha1(&a).as_ref() < sha1(&b).as_ref() { &a } else { &b };
        let resolved = room.resolve(&[with(&state, &[(pl.clone(), &a)]), with(&state, &[(pl.clone(), &b)])]);
        assert_eq!(&resolved[&pl], lowest);
        // Unknown candidates take no part: the other one is the state.
        let unknown = EventId::parse("$unknown:a.example").unwrap();
        let resolved = room.resolve(&[
            with(&state, &[(pl.clone(), &a)]),
            with(&state, &[(pl.clone(), &unknown)]),
        ]);
        assert_eq!(resolved[&pl], a);
    }
}
