//! The one integration-test binary. Every test runs the real `hearth` binary on a temporary
//! RocksDB directory and an ephemeral loopback port, and talks to it over HTTP.

mod support;

/// Application services on the client-server API: the as_token, masquerading, registration
/// and login, M_EXCLUSIVE, ts, MSC4190 devices, queries to services, `hearth appservice`.
mod appservice_client;
/// Transactions to application services and the appservice ping.
mod appservice_transactions;

/// Admin commands of the binary (`hearth user …`, `registration-token …`, config commands).
mod cli;
/// Accounts: registration, login, tokens, password, deactivation (spec "Client authentication").
mod client_account;
/// What real client libraries need in served events (found by tests/clients/): `redacts`.
mod client_compat;
/// Devices, profiles and account data.
mod client_devices_profile;
/// Durability: SIGKILL and restart, simulated power loss (`support::powercut`), failing closed
/// when the disk fails.
mod crash;
/// The room directory: aliases, canonical aliases, the public room list, room summaries.
mod directory;
/// End-to-end encryption: device, one-time, fallback and cross-signing keys, to-device
/// messages, key backup.
mod e2ee;
/// What Element Web relies on: invite state, display names, feature flags, presets.
mod element_web;
/// Federation, part 1: keys, the TLS listener, X-Matrix.
mod federation;
/// Device lists and cross-signing keys across Hearth servers: updates, the remote cache,
/// resyncs after gaps, forged updates, `keys/query` failures.
mod federation_devices;
/// Federation, part 2, between Hearth servers: server ACLs, presence, threaded and private
/// receipts, remote profiles, another server's public rooms.
mod federation_edus;
/// Gaps in a room's graph over federation: missing events, the state before them, lying state.
mod federation_gaps;
/// A hostile federation peer: forged, unauthorised, oversized and replayed transactions.
mod federation_hostile;
/// Knocks over federation both ways (knock, accept, withdraw, refuse) and the bound on remote
/// invites, between Hearth servers on loopback.
mod federation_knock;
/// Media across servers: remote downloads fetched once and cached, thumbnails of remote media,
/// the federation media endpoints, size limits, lying origins, federation off.
mod federation_media;
/// Federation reads served to other servers: events, state, backfill, visibility, directory.
mod federation_read;
/// Federation server discovery and the outbound HTTPS transport, as a library against a DNS
/// server and TLS servers on loopback.
mod federation_resolver;
/// The outbound side of federation transactions (the persistent queue and its delivery), as a
/// library against fake servers on loopback.
mod federation_sender;
/// Interoperability with a real Synapse from PyPI on loopback, both directions: joins,
/// messages, redactions, leaves, bans, state convergence, history from before a join.
mod federation_synapse;
/// Device lists across servers with a real Synapse, both directions.
mod federation_synapse_devices;
/// Federation, part 2, with a real Synapse: typing, receipts, presence, profiles, server ACLs.
mod federation_synapse_edus;
/// Media across servers with a real Synapse, both directions.
mod federation_synapse_media;
/// To-device messages and one-time key claims with a real Synapse, both ways.
mod federation_synapse_to_device;
/// To-device messages between Hearth servers: one device and `*`, exactly once, in order,
/// across a restart, forged senders ignored; a one-time key claimed across servers once; a
/// federated join's state in the joiner's sync.
mod federation_to_device;
/// Bad input, error shapes, CORS, rate limits, discovery endpoints.
mod http_layer;
/// Hardening: client addresses behind proxies, rate limits of sends, to-device messages, key
/// uploads and the room directory, the one-time key cap, the public room list's cache.
mod limits;
/// Media repository: uploads, downloads, thumbnails, previews and SSRF, dedup, admin, SIGKILL.
mod media;
/// The OAuth 2.0 API: metadata, client registration, code and device grants, sign-in pages.
mod oauth;
/// People and calls: the user directory, the space hierarchy, OpenID, TURN (with a real coturn
/// when installed), MatrixRTC transports.
mod people;
/// Push notifications: the push-rule API, `/notifications`, pushers and delivery to a push
/// gateway on loopback (down, restarted, rejecting).
mod push;
/// Event relationships: `/relations`, bundled aggregations, `/threads`, per-thread unread counts.
mod relations;
/// Who may read and join a room: history visibility, former members, knocking, restricted rooms.
mod room_access;
/// Room upgrades.
mod room_upgrade;
/// Rooms: events, state, membership, authorization, pagination.
mod rooms;
/// Server-side search: matching, ordering, paging, groupings, context, and what stays hidden.
mod search;
/// The send path's routing: grouped paths answer as before.
mod send_path;
/// Simplified sliding sync (MSC4186): connections, lists, room subscriptions, extensions.
mod sliding_sync;
/// Sync: tokens, long-polling, filters, typing, receipts, account data, presence.
mod sync;
/// Many big syncs at once: the bound on initial syncs under construction (issue 23).
mod sync_memory;
/// Thread subscriptions (MSC4306, MSC4308) and the list filters of the unstable sliding sync.
mod thread_subscriptions;
/// Architecture invariants of the source tree.
mod tidy;
/// Tokens: every token handed out is taken back where the spec takes one; bad ones refused.
mod tokens;
