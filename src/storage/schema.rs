//! The column-family catalog: every table's name, tuning preset and key/value layout, and the
//! stored schema version with its migrations.
//!
//! Names follow `<key>_<value>`. `SEP` is 0xFF (see [`super::codec`]); `u64` means 8 bytes
//! big-endian; "postcard" values are records defined in [`super::tables`].

use super::{Db, StorageError, StorageResult, codec};

/// Tuning presets; each table picks one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Small, point-looked-up records (accounts, devices, tokens).
    Small,
    /// Large values kept out of the LSM tree in blob files (media).
    Blobs,
}

impl Preset {
    /// Memtable size for a table of this preset.
    pub fn write_buffer_bytes(self) -> usize {
        match self {
            Preset::Small => 4 << 20,
            Preset::Blobs => 16 << 20,
        }
    }
}

/// One column family.
#[derive(Debug)]
pub struct TableDef {
    /// Column family name.
    pub name: &'static str,
    /// Tuning preset.
    pub preset: Preset,
}

/// `"schema_version"` → u64; `"relations_indexed"` → u64 (`tables::relations`). Server-wide
/// singletons.
pub const GLOBAL: &str = "global";
/// user id → postcard `AccountRecord` (password hash, flags, creation time).
pub const USERID_ACCOUNT: &str = "userid_account";
/// user id → JSON object bytes: the user's profile fields (`displayname`, `avatar_url`, …).
pub const USERID_PROFILE: &str = "userid_profile";
/// user id SEP device id → postcard `DeviceRecord`.
pub const USERDEVICEID_DEVICE: &str = "userdeviceid_device";
/// SHA-256(access token) → postcard `AccessRecord` (user, device, expiry).
pub const TOKENHASH_ACCESS: &str = "tokenhash_access";
/// SHA-256(refresh token) → postcard `RefreshRecord` (user, device).
pub const TOKENHASH_REFRESH: &str = "tokenhash_refresh";
/// user id SEP room id (empty for global) SEP event type → the content as JSON bytes.
pub const USERROOMTYPE_ACCOUNTDATA: &str = "userroomtype_accountdata";
/// registration token → postcard `RegistrationTokenRecord`.
pub const TOKEN_REGISTRATION: &str = "token_registration";
/// OAuth client id → postcard `OAuthClientRecord` (the client's registered metadata as JSON
/// text, its redirect URIs, registration time).
pub const CLIENTID_OAUTHCLIENT: &str = "clientid_oauthclient";
/// user id SEP device id → the OAuth client id the device was issued to (its refresh tokens
/// are good for that client only).
pub const USERDEVICE_OAUTHCLIENT: &str = "userdevice_oauthclient";

/// event id → u64 short event id.
pub const EVENTID_SHORTEVENTID: &str = "eventid_shorteventid";
/// u64 short event id → event id.
pub const SHORTEVENTID_EVENTID: &str = "shorteventid_eventid";
/// room id → u64 short room id.
pub const ROOMID_SHORTROOMID: &str = "roomid_shortroomid";
/// event type SEP state key → u64 short state key.
pub const STATEKEY_SHORTSTATEKEY: &str = "statekey_shortstatekey";
/// u64 short state key → event type SEP state key.
pub const SHORTSTATEKEY_STATEKEY: &str = "shortstatekey_statekey";
/// u64 short event id → the event's canonical JSON bytes.
pub const SHORTEVENTID_PDU: &str = "shorteventid_pdu";
/// u64 short room id ++ u64 stream position → u64 short event id.
pub const ROOMPOS_SHORTEVENTID: &str = "roompos_shorteventid";
/// u64 short event id → u64 short room id ++ u64 stream position.
pub const SHORTEVENTID_ROOMPOS: &str = "shorteventid_roompos";
/// u64 short room id → postcard `Vec<u64>` of forward extremities.
pub const SHORTROOMID_EXTREMITIES: &str = "shortroomid_extremities";
/// u64 layer id → postcard `state::Record` (a delta against a layer below, or a base).
pub const SHORTSTATEHASH_LAYER: &str = "shortstatehash_layer";
/// Schema version 1's state: u64 snapshot id → postcard `OldSnapshot` (a state set or a diff
/// against a parent). Emptied by the migration to version 2 (`state::migrate`).
pub const SHORTSTATEHASH_SNAPSHOT: &str = "shortstatehash_snapshot";
/// u64 short event id → u64 snapshot id of the state before the event.
pub const SHORTEVENTID_SHORTSTATEHASH: &str = "shorteventid_shortstatehash";
/// u64 short room id → u64 snapshot id of the room's current state.
pub const SHORTROOMID_SHORTSTATEHASH: &str = "shortroomid_shortstatehash";

/// user id SEP device id SEP transaction id → event id.
pub const USERDEVICETXN_EVENTID: &str = "userdevicetxn_eventid";

/// user id SEP room id → membership (`join`, `invite`, `leave`, `ban`, `knock`).
pub const USERROOM_MEMBERSHIP: &str = "userroom_membership";
/// room id SEP user id → membership.
pub const ROOMUSER_MEMBERSHIP: &str = "roomuser_membership";
/// user id SEP room id → empty: rooms the user has forgotten (cleared by their next membership).
pub const USERROOM_FORGOTTEN: &str = "userroom_forgotten";

/// u64 short event id → id of the event that redacted it.
pub const SHORTEVENTID_REDACTEDBY: &str = "shorteventid_redactedby";

/// u64 short room id ++ u64 short parent event id ++ u64 stream position of the child →
/// postcard `Relation` (child short event id, `rel_type`, event type): `tables::relations`.
pub const ROOMPARENTPOS_RELATION: &str = "roomparentpos_relation";
/// u64 short parent event id → empty: events that some event relates to.
pub const SHORTEVENTID_HASRELATIONS: &str = "shorteventid_hasrelations";
/// u64 short room id ++ u64 stream position of a thread reply → u64 short thread root id.
pub const ROOMPOS_THREADROOT: &str = "roompos_threadroot";

/// u64 ms ++ u32 nonce → postcard `ReportRecord` (abuse reports).
pub const REPORTID_REPORT: &str = "reportid_report";
/// OpenID tokens, two key shapes: `0x00 ++ SHA-256(token)` → postcard `OpenIdRecord` (user,
/// expiry), and `0x01 ++ u64 expiry (ms) ++ SHA-256(token)` → empty, the expiry index that
/// each new token's batch sweeps.
pub const OPENIDTOKEN_USER: &str = "openidtoken_user";
/// short event id → one byte (0 rejected by the authorization rules, 1 soft-failed) and the
/// reason as UTF-8: events received over federation that are stored but never served as
/// accepted.
pub const SHORTEVENTID_OUTCOME: &str = "shorteventid_outcome";
/// short event id → empty: this server's events in rooms with members on other servers, written
/// in the event's own batch and deleted once the event is in the federation queue
/// (`federation_queue`); those left at start (a crash in between) are queued then.
pub const SHORTEVENTID_UNSENT: &str = "shorteventid_unsent";
/// user id SEP room id → postcard `RemoteInvite` (the invite event's canonical JSON and the
/// stripped state the inviting server sent): invites to rooms this server does not have.
pub const USERROOM_REMOTEINVITE: &str = "userroom_remoteinvite";
/// user id SEP room id → postcard `RemoteKnock` (the knock event's canonical JSON, the
/// `knock_room_state` the resident server answered, the server knocked through and the room
/// version): our users' knocks on rooms this server does not have.
pub const USERROOM_REMOTEKNOCK: &str = "userroom_remoteknock";
/// server name SEP key id (`ed25519:abc`) → postcard `VerifyKeyRecord` (public key, valid
/// until, expired at): the signing keys of other servers, and ours retired by rotation.
pub const SERVERKEYID_VERIFYKEY: &str = "serverkeyid_verifykey";
/// server name → canonical JSON bytes: the server's latest self-signed key answer
/// (`/_matrix/key/v2/server`), as received, served again by our notary endpoints.
pub const SERVER_KEYANSWER: &str = "server_keyanswer";

/// server name SEP media id → postcard `MediaRecord` (uploader, type, name, content hash or
/// pending).
pub const MEDIAID_MEDIA: &str = "mediaid_media";
/// u64 blob id ++ u32 chunk index → up to 512 KiB of media bytes (BlobDB: out of the LSM).
pub const BLOBCHUNK_BYTES: &str = "blobchunk_bytes";
/// SHA-256 of content → postcard `BlobRecord` (blob id, size, reference count): dedup index.
pub const CONTENTHASH_BLOB: &str = "contenthash_blob";
/// u64 blob id → u64 ms: blobs whose chunks are being written; leftovers are deleted at start.
pub const BLOBID_PENDING: &str = "blobid_pending";
/// user id SEP media id → u64 expiry ms: asynchronous uploads created but not yet uploaded.
pub const USERMEDIA_PENDING: &str = "usermedia_pending";
/// server name SEP media id SEP thumbnail spec → postcard `ThumbnailRecord` (BlobDB).
pub const MEDIATHUMB_THUMBNAIL: &str = "mediathumb_thumbnail";
/// server name SEP media id → u64 ms of the last download.
pub const MEDIAID_LASTACCESS: &str = "mediaid_lastaccess";
/// URL → postcard `PreviewRecord` (cached OpenGraph JSON).
pub const URL_PREVIEW: &str = "url_preview";
/// local room alias → postcard `AliasRecord` (room id, creator).
pub const ALIAS_ALIASRECORD: &str = "alias_aliasrecord";
/// room id SEP local room alias → empty (a room's local aliases).
pub const ROOMALIAS_EMPTY: &str = "roomalias_empty";
/// room id → empty: the rooms published in the room directory.
pub const ROOMID_PUBLISHED: &str = "roomid_published";
/// user id SEP filter id → the filter definition as JSON bytes.
pub const USERFILTERID_FILTER: &str = "userfilterid_filter";
/// u64 short event id → user id SEP device id SEP transaction id (the client transaction that
/// sent it).
pub const SHORTEVENTID_TXN: &str = "shorteventid_txn";
/// change-log kind SEP scope SEP item → u64 stream position ++ value (`tables::streams`).
pub const SCOPEITEM_POSVALUE: &str = "scopeitem_posvalue";
/// change-log kind SEP scope SEP u64 stream position → item (`tables::streams`).
pub const SCOPEPOS_ITEM: &str = "scopepos_item";

/// user id SEP device id → the device's signed device keys as JSON bytes.
pub const USERDEVICE_DEVICEKEYS: &str = "userdevice_devicekeys";
/// user id SEP device id SEP key id (`algorithm:id`) → an unclaimed one-time key as JSON bytes.
pub const USERDEVICEKEYID_ONETIMEKEY: &str = "userdevicekeyid_onetimekey";
/// user id SEP device id SEP algorithm → postcard `FallbackRecord` (key id, JSON, used).
pub const USERDEVICEALGO_FALLBACKKEY: &str = "userdevicealgo_fallbackkey";
/// user id SEP usage (`master`, `self_signing`, `user_signing`) → the cross-signing key JSON.
pub const USERUSAGE_CROSSSIGNINGKEY: &str = "userusage_crosssigningkey";
/// target user SEP target key (device id or public key) SEP signer user SEP signer key id →
/// the signature (signatures uploaded after the keys they sign).
pub const TARGETSIGNER_SIGNATURE: &str = "targetsigner_signature";
/// user id SEP device id SEP u64 stream position ++ u32 index → a to-device event as JSON.
pub const USERDEVICEPOS_TODEVICE: &str = "userdevicepos_todevice";
/// sender user id SEP sender device id SEP transaction id → empty: `sendToDevice` transactions
/// already done.
pub const USERDEVICETXN_TODEVICE: &str = "userdevicetxn_todevice";
/// user id SEP u64 backup version → postcard `BackupVersionRecord`.
pub const USERVERSION_BACKUP: &str = "userversion_backup";
/// user id SEP u64 backup version SEP room id SEP session id → the backed-up key as JSON.
pub const USERVERSIONROOMSESSION_BACKUPKEY: &str = "userversionroomsession_backupkey";
/// u64 stream position → room id SEP event id: a room event whose push actions are still to be
/// evaluated (written in the event's own batch; removed in the batch that records the result).
pub const POS_PUSHPENDING: &str = "pos_pushpending";
/// user id SEP app id SEP pushkey → postcard `PusherRecord`.
pub const USERAPPKEY_PUSHER: &str = "userappkey_pusher";
/// app id SEP pushkey SEP user id → empty: who holds a pushkey (for `append: false`).
pub const APPKEYUSER_EMPTY: &str = "appkeyuser_empty";
/// user id SEP app id SEP pushkey SEP u64 stream position → postcard `QueuedPush`: a push
/// still to be delivered to a gateway (each pusher's in stream order).
pub const PUSHERPOS_PUSHQUEUE: &str = "pusherpos_pushqueue";

/// u64 short room id ++ term ++ SEP ++ u64 stream position → 11-byte posting (short event id,
/// field, term frequency, text length): the search index (`tables::search`).
pub const ROOMTERMPOS_POSTING: &str = "roomtermpos_posting";

/// destination server name SEP u64 sequence number (per destination, in queue order) →
/// postcard `QueuedPdu` (event id, the PDU's canonical JSON bytes): the outbound federation
/// queue (`tables::federation_queue`), each entry deleted once a transaction carrying it was
/// answered 200.
pub const DESTSEQ_FEDPDU: &str = "destseq_fedpdu";
/// destination server name SEP u64 sequence number (per destination, in queue order) →
/// postcard `QueuedEdu` (the EDU's JSON bytes): the outbound EDUs that must not be lost
/// (`m.direct_to_device`), delivered with the PDUs of `destseq_fedpdu` in the same
/// transactions and deleted once one carrying them was answered 200.
pub const DESTSEQ_FEDEDU: &str = "destseq_fededu";
/// u64 week number (ms since the epoch / one week) ++ origin server name SEP message id →
/// empty: the `m.direct_to_device` EDUs received from other servers in that week
/// (`tables::to_device`), so a retransmitted one is delivered once; weeks before the last
/// are deleted whole.
pub const WEEKORIGINMSG_EMPTY: &str = "weekoriginmsg_empty";
/// remote user id → postcard `RemoteDeviceList` (devices with their keys as JSON bytes, master
/// and self-signing keys, the last `stream_id` applied, a stale flag): the cache of other
/// servers' users' device lists (`tables::device_lists_fed`), kept for users sharing a room
/// with one of ours.
pub const USER_REMOTEDEVICELIST: &str = "user_remotedevicelist";
/// local user id → u64: the `stream_id` of the last `m.device_list_update` EDU about the user
/// (`tables::device_lists_fed`; the next one names it as `prev_id`).
pub const USER_DEVICELISTFEDID: &str = "user_devicelistfedid";

/// appservice id SEP u64 sequence number (per service, in queue order) → the event in client
/// format as JSON bytes: the events still to be sent to each application service
/// (`tables::appservice_queue`), deleted once a transaction carrying them was answered 200.
pub const SERVICESEQ_ASEVENT: &str = "serviceseq_asevent";
/// appservice id → postcard `AsTxnState` (the next transaction id, and the transaction in
/// flight as built: its id, the last queue entry it carries, its body), so a retry after a
/// restart sends the same transaction again.
pub const SERVICE_ASTXN: &str = "service_astxn";

/// Every column family, opened (and created if missing) at start.
pub const TABLES: &[TableDef] = &[
    small(GLOBAL),
    small(USER_REMOTEDEVICELIST),
    small(USER_DEVICELISTFEDID),
    small(USERID_ACCOUNT),
    small(USERID_PROFILE),
    small(USERDEVICEID_DEVICE),
    small(TOKENHASH_ACCESS),
    small(TOKENHASH_REFRESH),
    small(USERROOMTYPE_ACCOUNTDATA),
    small(TOKEN_REGISTRATION),
    small(CLIENTID_OAUTHCLIENT),
    small(USERDEVICE_OAUTHCLIENT),
    small(EVENTID_SHORTEVENTID),
    small(SHORTEVENTID_EVENTID),
    small(ROOMID_SHORTROOMID),
    small(STATEKEY_SHORTSTATEKEY),
    small(SHORTSTATEKEY_STATEKEY),
    small(SHORTEVENTID_PDU),
    small(ROOMPOS_SHORTEVENTID),
    small(SHORTEVENTID_ROOMPOS),
    small(SHORTROOMID_EXTREMITIES),
    small(SHORTSTATEHASH_LAYER),
    small(SHORTSTATEHASH_SNAPSHOT),
    small(SHORTEVENTID_SHORTSTATEHASH),
    small(SHORTROOMID_SHORTSTATEHASH),
    small(USERDEVICETXN_EVENTID),
    small(USERROOM_MEMBERSHIP),
    small(ROOMUSER_MEMBERSHIP),
    small(USERROOM_FORGOTTEN),
    small(SHORTEVENTID_REDACTEDBY),
    small(ROOMPARENTPOS_RELATION),
    small(SHORTEVENTID_HASRELATIONS),
    small(ROOMPOS_THREADROOT),
    small(REPORTID_REPORT),
    small(OPENIDTOKEN_USER),
    small(SHORTEVENTID_OUTCOME),
    small(SHORTEVENTID_UNSENT),
    small(USERROOM_REMOTEINVITE),
    small(USERROOM_REMOTEKNOCK),
    small(SERVERKEYID_VERIFYKEY),
    small(SERVER_KEYANSWER),
    small(MEDIAID_MEDIA),
    blobs(BLOBCHUNK_BYTES),
    small(CONTENTHASH_BLOB),
    small(BLOBID_PENDING),
    small(USERMEDIA_PENDING),
    blobs(MEDIATHUMB_THUMBNAIL),
    small(MEDIAID_LASTACCESS),
    small(URL_PREVIEW),
    small(ALIAS_ALIASRECORD),
    small(ROOMALIAS_EMPTY),
    small(ROOMID_PUBLISHED),
    small(USERFILTERID_FILTER),
    small(SCOPEITEM_POSVALUE),
    small(SCOPEPOS_ITEM),
    small(SHORTEVENTID_TXN),
    small(USERDEVICE_DEVICEKEYS),
    small(USERDEVICEKEYID_ONETIMEKEY),
    small(USERDEVICEALGO_FALLBACKKEY),
    small(USERUSAGE_CROSSSIGNINGKEY),
    small(TARGETSIGNER_SIGNATURE),
    small(USERDEVICEPOS_TODEVICE),
    small(USERDEVICETXN_TODEVICE),
    small(USERVERSION_BACKUP),
    small(USERVERSIONROOMSESSION_BACKUPKEY),
    small(POS_PUSHPENDING),
    small(USERAPPKEY_PUSHER),
    small(APPKEYUSER_EMPTY),
    small(PUSHERPOS_PUSHQUEUE),
    small(ROOMTERMPOS_POSTING),
    small(DESTSEQ_FEDPDU),
    small(DESTSEQ_FEDEDU),
    small(WEEKORIGINMSG_EMPTY),
    small(SERVICESEQ_ASEVENT),
    small(SERVICE_ASTXN),
];

const fn small(name: &'static str) -> TableDef {
    TableDef {
        name,
        preset: Preset::Small,
    }
}

const fn blobs(name: &'static str) -> TableDef {
    TableDef {
        name,
        preset: Preset::Blobs,
    }
}

/// Tables older versions kept and this one no longer has: dropped, with what they hold, when
/// the database is opened. `userpos_notification` was a per-recipient log of notifications,
/// now evaluated when `/notifications` asks (`services::push::notifications`).
pub const RETIRED_TABLES: &[&str] = &["userpos_notification"];

/// The schema version this build writes. Bump it with a migration in [`check_and_migrate`].
pub const SCHEMA_VERSION: u64 = 2;

const VERSION_KEY: &[u8] = b"schema_version";

/// Stamps a new database, refuses one from a newer Hearth and migrates an older one.
pub(super) fn check_and_migrate(db: &std::sync::Arc<Db>) -> StorageResult<()> {
    let found = match db.get(GLOBAL, VERSION_KEY)? {
        Some(bytes) => codec::read_u64(GLOBAL, &bytes)?,
        None => {
            let mut batch = db.batch();
            batch.put(GLOBAL, VERSION_KEY, &codec::u64_bytes(SCHEMA_VERSION));
            batch.commit_blocking()?;
            return Ok(());
        }
    };
    if found > SCHEMA_VERSION {
        return Err(StorageError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    // Migrations from older versions, one step per version; each stamps the version it reaches
    // once its writes are durable, so an interrupted one runs again.
    if found < 2 {
        // Version 2: room state as layers of deltas.
        super::tables::state::migrate::to_layers(db)?;
        force_version(db, 2)?;
    }
    Ok(())
}

/// Reads the stored schema version.
pub fn stored_version(db: &Db) -> StorageResult<Option<u64>> {
    db.get(GLOBAL, VERSION_KEY)?
        .map(|b| codec::read_u64(GLOBAL, &b))
        .transpose()
}

/// Overwrites the stored schema version (tests of the refuse-newer rule use this).
pub fn force_version(db: &std::sync::Arc<Db>, version: u64) -> StorageResult<()> {
    let mut batch = db.batch();
    batch.put(GLOBAL, VERSION_KEY, &codec::u64_bytes(version));
    batch.commit_blocking()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{StorageError, StorageOptions};

    fn options() -> StorageOptions {
        StorageOptions::for_tests()
    }

    #[test]
    fn new_databases_are_stamped_and_newer_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path(), &options()).unwrap();
            assert_eq!(stored_version(&db).unwrap(), Some(SCHEMA_VERSION));
            force_version(&db, SCHEMA_VERSION + 1).unwrap();
        }
        match Db::open(dir.path(), &options()) {
            Err(StorageError::SchemaTooNew { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION))
            }
            other => panic!("expected SchemaTooNew, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_second_open_reports_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Db::open(dir.path(), &options()).unwrap();
        match Db::open(dir.path(), &options()) {
            Err(StorageError::Locked(_)) => {}
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn retired_tables_are_dropped_on_open_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path(), &options()).unwrap();
            let mut batch = db.batch();
            batch.put(USERID_PROFILE, b"@a:x", b"{}");
            batch.commit_blocking().unwrap();
        }
        {
            // What an older version left: the retired table, with entries.
            let mut opts = rocksdb::Options::default();
            opts.create_missing_column_families(true);
            let mut names = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
            names.push(RETIRED_TABLES[0].to_owned());
            let old = rocksdb::DB::open_cf(&opts, dir.path(), &names).unwrap();
            let cf = old.cf_handle(RETIRED_TABLES[0]).unwrap();
            old.put_cf(cf, b"@a:x\xff\0\0\0\0\0\0\0\x01", b"entry").unwrap();
        }
        let db = Db::open(dir.path(), &options()).unwrap();
        assert_eq!(db.get(USERID_PROFILE, b"@a:x").unwrap().as_deref(), Some(&b"{}"[..]));
        drop(db);
        let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        assert!(!names.iter().any(|n| n == RETIRED_TABLES[0]), "{names:?}");
        assert!(names.iter().any(|n| n == USERID_PROFILE));
    }
}
