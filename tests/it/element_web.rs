//! What Element Web met on Hearth in its first flows, each what Synapse does: the inviter's
//! member event in an invite's stripped state, a display name from registration, the
//! cross-signing feature flag, room version 12's `trusted_private_chat`, and third-party
//! lookups with nothing bridged.

use serde_json::json;

use crate::{
    rooms::create_room,
    support::{TestServer, enc},
};

#[test]
fn an_invite_names_the_inviter_in_its_stripped_state() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(
        &alice,
        json!({"name": "Plans", "invite": [bob.uid()], "is_direct": true}),
    );
    let body = bob.get("/_matrix/client/v3/sync?timeout=0").ok().clone();
    let events = body["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .expect("invite_state")
        .clone();
    let member = |user: &str| {
        events
            .iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == user)
            .unwrap_or_else(|| panic!("no member event of {user}: {events:?}"))
    };
    let inviter = member(&alice.uid());
    assert_eq!(inviter["content"]["membership"], "join");
    assert_eq!(inviter["content"]["displayname"], "alice");
    assert_eq!(inviter["sender"], alice.uid());
    let invite = member(&bob.uid());
    assert_eq!(invite["content"]["membership"], "invite");
    assert_eq!(invite["content"]["is_direct"], true);
    assert!(events.iter().any(|e| e["type"] == "m.room.name"));
    // The invitee's own member event stays last.
    assert_eq!(events.last().unwrap()["state_key"], bob.uid());
}

#[test]
fn a_new_account_is_named_after_its_localpart() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let profile = alice.get(&format!("/_matrix/client/v3/profile/{}", enc(&alice.uid())));
    assert_eq!(profile.ok()["displayname"], "alice");
    let room = create_room(&alice, json!({}));
    let member = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(&room),
        enc(&alice.uid())
    ));
    assert_eq!(member.ok()["displayname"], "alice");

    // Accounts an admin creates too.
    let mut offline = TestServer::unstarted(&[]);
    let out = offline.admin(&["user", "create", "carol"], Some("secret\n"));
    assert!(out.status.success(), "{out:?}");
    offline.launch();
    let mut carol = offline.client();
    carol.login("carol", "secret");
    let profile = carol.get(&format!("/_matrix/client/v3/profile/{}", enc(&carol.uid())));
    assert_eq!(profile.ok()["displayname"], "carol");

    // The key turns it off.
    let quiet = TestServer::start_with(&[("HEARTH_REGISTRATION__LOCALPART_AS_DISPLAY_NAME", "false")]);
    let bob = quiet.user("bob", "pw");
    let profile = bob.get(&format!("/_matrix/client/v3/profile/{}", enc(&bob.uid())));
    assert!(profile.ok().get("displayname").is_none(), "{}", profile.text);
}

#[test]
fn versions_advertise_cross_signing() {
    let server = TestServer::start();
    let versions = server.client().get("/_matrix/client/versions");
    assert_eq!(versions.ok()["unstable_features"]["org.matrix.e2e_cross_signing"], true);
}

#[test]
fn trusted_private_chat_in_v12_makes_invitees_creators() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(
        &alice,
        json!({"preset": "trusted_private_chat", "invite": [bob.uid()], "is_direct": true, "room_version": "12"}),
    );
    let state = |kind: &str| {
        alice
            .get(&format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(&room)))
            .ok()
            .clone()
    };
    assert_eq!(state("m.room.create")["additional_creators"], json!([bob.uid()]));
    let power = state("m.room.power_levels");
    assert!(power["users"].get(bob.uid()).is_none(), "{power}");
    assert!(power["users"].get(alice.uid()).is_none(), "{power}");
    assert_eq!(power["events"]["m.room.tombstone"], 150);
    // Bob joins and, as a creator, may change what only creators may.
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({}))
        .ok();
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room)),
        json!({"users": {}, "users_default": 0, "events_default": 0, "state_default": 50, "ban": 50,
               "kick": 50, "redact": 50, "invite": 0, "events": {"m.room.tombstone": 150}}),
    )
    .ok();

    // In room version 11 the invitee is listed at the creator's level instead.
    let old = create_room(
        &alice,
        json!({"preset": "trusted_private_chat", "invite": [bob.uid()], "room_version": "11"}),
    );
    let power = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
            enc(&old)
        ))
        .ok()
        .clone();
    assert_eq!(power["users"][bob.uid()], 100);
    assert_eq!(power["users"][alice.uid()], 100);
}

#[test]
fn third_party_lookups_with_nothing_bridged() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    assert_eq!(*alice.get("/_matrix/client/v3/thirdparty/protocols").ok(), json!({}));
    for path in [
        "/_matrix/client/v3/thirdparty/protocol/irc",
        "/_matrix/client/v3/thirdparty/location/irc",
        "/_matrix/client/v3/thirdparty/user/irc?name=bob",
    ] {
        alice.get(path).expect_err(404, "M_NOT_FOUND");
    }
    let users = alice.get(&format!(
        "/_matrix/client/v3/thirdparty/user?userid={}",
        enc(&alice.uid())
    ));
    assert_eq!(*users.ok(), json!([]));
    let locations = alice.get("/_matrix/client/v3/thirdparty/location?alias=%23x%3Alocalhost");
    assert_eq!(*locations.ok(), json!([]));
    server
        .client()
        .get("/_matrix/client/v3/thirdparty/protocols")
        .expect_err(401, "M_MISSING_TOKEN");
}
