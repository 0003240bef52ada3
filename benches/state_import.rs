//! The bulk-state import a federation join needs (issue 23, item 3): a room whose state has
//! `--members` events (default 100,000) stored through `Rooms::import_state`, in process on a
//! temporary RocksDB directory with Hearth's durable defaults. Reports the time to build and
//! sign the events (what a remote server did, not counted), the import time, the peak RSS
//! (VmHWM) before and after, how much the data files grow (flushed, WAL excluded: the events,
//! their ids, the membership index and the one state layer) against the events' own bytes,
//! and a lookup and a lazy-members read of the imported room. Asserts no timing.
//!
//! `cargo bench --bench state_import -- [--members 100000]`

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use hearth::services::{
    Services, events,
    rooms::{
        Selection,
        create::{CreateRoom, Preset},
        membership::MemberProfile,
    },
};
use ruma::{CanonicalJsonValue, OwnedEventId, RoomVersionId, UserId, events::StateEventType};
use serde_json::json;

mod support;

fn members_arg() -> usize {
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--members" {
            return it.next().and_then(|v| v.parse().ok()).expect("--members N");
        }
    }
    100_000
}

fn object(value: serde_json::Value) -> ruma::CanonicalJsonObject {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(object)) => object,
        _ => unreachable!("an object"),
    }
}

/// Bytes of the data directory's files but the write-ahead log (`*.log`).
fn files_without_wal(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .expect("data directory")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_none_or(|x| x != "log"))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

#[tokio::main]
async fn main() {
    let members = members_arg();
    let dir = tempfile::tempdir().expect("temporary directory");
    let env = vec![
        (
            "HEARTH_DATABASE__PATH".to_owned(),
            dir.path().join("db").display().to_string(),
        ),
        (
            "HEARTH_SIGNING_KEY_PATH".to_owned(),
            dir.path().join("signing.key").display().to_string(),
        ),
        ("HEARTH_SERVER_NAME".to_owned(), "bench.local".to_owned()),
    ];
    let config = hearth::config::load(None, env, &hearth::config::Overrides::default()).expect("config");
    let services = Services::open(config).expect("services");
    let rooms = &services.rooms;
    let pid = std::process::id();
    let rss_start = support::status_mb(pid, "VmHWM");

    let creator = UserId::parse("@creator:bench.local").unwrap();
    let request = CreateRoom {
        creator_profile: MemberProfile::from_profile(&serde_json::Map::new()),
        version: RoomVersionId::V11,
        preset: Preset::PublicChat,
        creation_content: Default::default(),
        power_level_override: Default::default(),
        initial_state: Vec::new(),
        name: Some("imported".to_owned()),
        topic: None,
        invite: Vec::new(),
        is_direct: false,
        alias_localpart: None,
        publish: false,
    };
    let room = rooms.create_room(&creator, request).await.expect("room");
    let id_of = |kind: StateEventType| rooms.state_event(&room, &kind, "").unwrap().unwrap().event_id;
    let auth = vec![
        id_of(StateEventType::RoomCreate),
        id_of(StateEventType::RoomPowerLevels),
        id_of(StateEventType::RoomJoinRules),
    ];
    let prev = id_of(StateEventType::RoomName);

    let t = Instant::now();
    let mut events: Vec<(OwnedEventId, Vec<u8>)> = Vec::with_capacity(members);
    let mut event_bytes = 0usize;
    for n in 0..members {
        let user = UserId::parse(format!("@member{n}:bench.local")).unwrap();
        let signed = events::build(
            &services.server_keys,
            "bench.local",
            events::NewPdu {
                room_version: &RoomVersionId::V11,
                room_id: Some(&room),
                sender: &user,
                kind: "m.room.member",
                state_key: Some(user.as_str()),
                content: object(json!({"membership": "join", "displayname": format!("Member {n}")})),
                prev_events: vec![prev.clone()],
                auth_events: auth.clone(),
                depth: 10,
                origin_server_ts: 1,
                redacts: None,
                reference_hashes: None,
            },
        )
        .expect("event");
        event_bytes += signed.bytes.len();
        events.push((signed.event_id, signed.bytes));
    }
    let build = t.elapsed();
    let rss_built = support::status_mb(pid, "VmHWM");
    services.flush_for_shutdown();
    let disk_before = files_without_wal(&dir.path().join("db"));

    let t = Instant::now();
    let len = rooms.import_state(&room, events).await.expect("import");
    let import = t.elapsed();
    let rss_imported = support::status_mb(pid, "VmHWM");

    let t = Instant::now();
    let last = format!("@member{}:bench.local", members - 1);
    let found = rooms.state_event(&room, &StateEventType::RoomMember, &last).unwrap();
    let lookup = t.elapsed();
    assert!(found.is_some(), "the last member is in the state");
    let wanted: BTreeSet<String> = ["@member7:bench.local".to_owned(), creator.to_string()].into();
    let t = Instant::now();
    let lazy = rooms
        .current_state_selected(&room, Selection::MembersOf(&wanted))
        .unwrap();
    let lazy_read = t.elapsed();
    let t = Instant::now();
    let full = rooms.full_state(&room).unwrap();
    let full_read = t.elapsed();
    assert_eq!(full.len() as u64, len);
    drop(full);
    services.flush_for_shutdown();
    let disk_after = files_without_wal(&dir.path().join("db"));

    let line = json!({
        "members": members,
        "state_entries": len,
        "build_and_sign_s": build.as_secs_f64(),
        "import_s": import.as_secs_f64(),
        "import_events_per_s": (members as f64 / import.as_secs_f64()).round(),
        "rss_hwm_start_mb": rss_start,
        "rss_hwm_after_build_mb": rss_built,
        "rss_hwm_after_import_mb": rss_imported,
        "event_bytes_mb": event_bytes as f64 / 1e6,
        "disk_growth_mb": (disk_after as f64 - disk_before as f64) / 1e6,
        "member_lookup_ms": ms(lookup),
        "lazy_state_ms": ms(lazy_read),
        "lazy_state_events": lazy.len(),
        "full_state_ms": ms(full_read),
    });
    println!("{line}");
    eprintln!(
        "imported {members} member events in {:.2} s ({:.0}/s); peak RSS {rss_start:.0} → {rss_built:.0} (events built) → {rss_imported:.0} MB (imported); \
         events {:.1} MB; data files grew {:.1} MB (flushed, WAL excluded); one member {:.2} ms; lazy state {:.2} ms ({} events); full state {:.0} ms",
        import.as_secs_f64(),
        members as f64 / import.as_secs_f64(),
        event_bytes as f64 / 1e6,
        (disk_after as f64 - disk_before as f64) / 1e6,
        ms(lookup),
        ms(lazy_read),
        lazy.len(),
        ms(full_read),
    );
}
