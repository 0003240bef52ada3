//! The HTTP layer: parse, authenticate, call a service, answer. No RocksDB and no Matrix rules
//! live here.
//!
//! [`configure`] is the route table: every endpoint Hearth serves is registered in it, keyed by
//! ruma's endpoint metadata (method, paths, authentication scheme), so paths and auth come from
//! the spec's own types. Federation routes are mounted only when federation is enabled.

pub mod client;
pub mod extract;
pub mod federation;
pub mod respond;
pub mod router;

use actix_web::web;

use crate::services::rate_limit::LimitClass;
use router::RouteTable;

/// Registers every route of the server on `cfg`; the server-server routes only when
/// `federation` is on.
pub fn configure(cfg: &mut web::ServiceConfig, federation: bool) {
    let mut t = RouteTable::default();

    if federation {
        t.add(LimitClass::Client, self::federation::version::get_server_version);
        t.add(LimitClass::Client, self::federation::keys::get_server_keys);
        t.add(LimitClass::Client, self::federation::keys::get_remote_server_keys);
        t.add(LimitClass::Client, self::federation::keys::get_remote_server_keys_batch);
        t.add(LimitClass::Client, self::federation::query::get_profile_information);
        t.add(LimitClass::Client, self::federation::e2ee::get_keys);
        t.add(LimitClass::Client, self::federation::e2ee::claim_keys);
        t.add(LimitClass::Client, self::federation::e2ee::get_devices);
        t.add(LimitClass::Client, self::federation::membership::make_join);
        t.add_json(LimitClass::Client, self::federation::membership::send_join);
        t.add(LimitClass::Client, self::federation::membership::invite);
        t.add(LimitClass::Client, self::federation::membership::make_leave);
        t.add(LimitClass::Client, self::federation::membership::send_leave);
        t.add(LimitClass::Client, self::federation::membership::make_knock);
        t.add(LimitClass::Client, self::federation::membership::send_knock);
        t.add(LimitClass::Client, self::federation::send::send_transaction);
        t.add(LimitClass::Client, self::federation::events::get_event);
        t.add(LimitClass::Client, self::federation::events::get_room_state);
        t.add(LimitClass::Client, self::federation::events::get_room_state_ids);
        t.add(LimitClass::Client, self::federation::events::get_event_authorization);
        t.add(LimitClass::Client, self::federation::events::get_backfill);
        t.add(LimitClass::Client, self::federation::events::get_missing_events);
        t.add(LimitClass::Client, self::federation::events::get_event_by_timestamp);
        t.add(LimitClass::Client, self::federation::directory::get_room_information);
        t.add(LimitClass::Client, self::federation::directory::get_public_rooms);
        t.add(
            LimitClass::Client,
            self::federation::directory::get_public_rooms_filtered,
        );
        self::federation::media::configure(&mut t);
    }

    // Discovery and server information.
    t.add(LimitClass::Client, client::versions::get_supported_versions);
    t.add(LimitClass::Client, client::versions::get_capabilities);
    t.add(LimitClass::Client, client::well_known::discover_homeserver);
    cfg.route(
        "/.well-known/matrix/server",
        web::get().to(client::well_known::discover_server),
    );
    // Served although federation is off: widgets and call services check OpenID tokens here.
    cfg.route(
        "/_matrix/federation/v1/openid/userinfo",
        web::get().to(client::openid::userinfo),
    );

    // Registration and login.
    t.add(LimitClass::Register, client::register::register);
    t.add(LimitClass::Register, client::register::get_username_availability);
    t.add(
        LimitClass::Register,
        client::register::check_registration_token_validity,
    );
    t.add(LimitClass::Login, client::session::get_login_types);
    t.add(LimitClass::Login, client::session::login);
    t.add(LimitClass::Client, client::session::refresh_token);
    t.add(LimitClass::Client, client::session::logout);
    t.add(LimitClass::Client, client::session::logout_all);

    // The account.
    t.add(LimitClass::Client, client::account::whoami);
    t.add(LimitClass::Client, client::account::change_password);
    t.add(LimitClass::Client, client::account::deactivate);
    t.add(LimitClass::Client, client::threepid::get_3pids);
    t.add(LimitClass::Client, client::threepid::request_email_token);
    t.add(LimitClass::Client, client::threepid::request_msisdn_token);
    t.add(LimitClass::Client, client::threepid::add_3pid);
    t.add(LimitClass::Client, client::threepid::bind_3pid);
    t.add(LimitClass::Client, client::threepid::delete_3pid);
    t.add(LimitClass::Client, client::threepid::unbind_3pid);
    t.add(LimitClass::Client, client::admin::get_user_info);

    // Devices.
    t.add(LimitClass::Client, client::device::get_devices);
    t.add(LimitClass::Client, client::device::get_device);
    t.add_answering(
        LimitClass::Client,
        client::device::update_device,
        client::device::updated_answer,
    );
    t.add(LimitClass::Client, client::device::delete_device);
    t.add(LimitClass::Client, client::device::delete_devices);

    // Profile and account data.
    t.add(LimitClass::Client, client::profile::get_profile);
    t.add(LimitClass::Client, client::profile::get_profile_field);
    t.add(LimitClass::Client, client::profile::set_profile_field);
    t.add(LimitClass::Client, client::profile::delete_profile_field);
    t.add(LimitClass::Client, client::push_rules::get_pushrules_all);
    t.add(LimitClass::Client, client::push_rules::get_pushrules_global_scope);
    t.add(LimitClass::Client, client::push_rules::get_pushrule);
    t.add(LimitClass::Client, client::push_rules::set_pushrule);
    t.add(LimitClass::Client, client::push_rules::delete_pushrule);
    t.add(LimitClass::Client, client::push_rules::get_pushrule_enabled);
    t.add(LimitClass::Client, client::push_rules::set_pushrule_enabled);
    t.add(LimitClass::Client, client::push_rules::get_pushrule_actions);
    t.add(LimitClass::Client, client::push_rules::set_pushrule_actions);
    t.add(LimitClass::Client, client::push::get_pushers);
    t.add(LimitClass::Client, client::push::set_pusher);
    t.add(LimitClass::Client, client::push::get_notifications);
    t.add(LimitClass::Client, client::account_data::get_global_account_data);
    t.add(LimitClass::Client, client::account_data::set_global_account_data);

    // Rooms.
    t.add(LimitClass::Client, client::room::create_room);
    t.add(LimitClass::Client, client::room::get_room_event);
    t.add(LimitClass::Client, client::room::get_message_events);
    t.add(LimitClass::Client, client::room::get_context);
    t.add(LimitClass::Client, client::room::get_event_by_timestamp);
    t.add(LimitClass::Client, client::relations::get_relating_events);
    t.add(LimitClass::Client, client::relations::get_relating_events_with_rel_type);
    t.add(
        LimitClass::Client,
        client::relations::get_relating_events_with_rel_type_and_event_type,
    );
    t.add(LimitClass::Client, client::relations::get_threads);
    t.add(LimitClass::Client, client::thread_subscriptions::subscribe_thread);
    t.add(
        LimitClass::Client,
        client::thread_subscriptions::get_thread_subscription,
    );
    t.add(LimitClass::Client, client::thread_subscriptions::unsubscribe_thread);
    t.add(
        LimitClass::Client,
        client::thread_subscriptions::get_thread_subscriptions_changes,
    );
    t.add_json(LimitClass::Client, client::search::search);
    t.add(LimitClass::Client, client::room_upgrade::upgrade_room);
    t.add(LimitClass::Message, client::message::send_message_event);
    t.add(LimitClass::Message, client::message::redact_event);
    t.add(LimitClass::Client, client::state::get_state_events);
    t.add(LimitClass::Client, client::state::get_state_event_for_key);
    t.add(LimitClass::Message, client::state::send_state_event);
    t.add(LimitClass::Client, client::membership::join_room_by_id);
    t.add(LimitClass::Client, client::membership::invite_user);
    t.add(LimitClass::Client, client::membership::leave_room);
    t.add(LimitClass::Client, client::membership::kick_user);
    t.add(LimitClass::Client, client::membership::ban_user);
    t.add(LimitClass::Client, client::membership::unban_user);
    t.add(LimitClass::Client, client::membership::joined_members);
    t.add(LimitClass::Client, client::membership::knock_room);
    t.add(LimitClass::Client, client::membership::forget_room);
    t.add(LimitClass::Client, client::membership::get_member_events);
    t.add(LimitClass::Client, client::membership::join_room_by_id_or_alias);
    t.add(LimitClass::Client, client::membership::joined_rooms);

    // Room directory: aliases, the published room list, room summaries.
    t.add(LimitClass::Client, client::directory::create_alias);
    t.add(LimitClass::Client, client::directory::get_alias);
    t.add(LimitClass::Client, client::directory::delete_alias);
    t.add(LimitClass::Client, client::directory::room_aliases);
    t.add(LimitClass::PublicRooms, client::directory::get_public_rooms);
    t.add(LimitClass::PublicRooms, client::directory::get_public_rooms_filtered);
    t.add(LimitClass::Client, client::directory::get_room_visibility);
    t.add(LimitClass::Client, client::directory::set_room_visibility);
    t.add_json(LimitClass::Client, client::directory::get_summary);
    // Sync and what it carries (filters, typing, receipts, read markers, room account data,
    // tags, presence).
    t.add_answering(LimitClass::Client, client::sync::sync_events, client::sync::answer);
    t.add(LimitClass::Client, client::sliding_sync::sliding_sync);
    t.add_json(LimitClass::Client, client::sliding_sync::sliding_sync_v4);
    t.add(LimitClass::Client, client::filter::create_filter);
    t.add(LimitClass::Client, client::filter::get_filter);
    t.add(LimitClass::Client, client::typing::create_typing_event);
    t.add(LimitClass::Client, client::receipt::create_receipt);
    t.add(LimitClass::Client, client::receipt::set_read_marker);
    t.add(LimitClass::Client, client::account_data::get_room_account_data);
    t.add(LimitClass::Client, client::account_data::set_room_account_data);
    t.add(LimitClass::Client, client::account_data::get_tags);
    t.add(LimitClass::Client, client::account_data::create_tag);
    t.add(LimitClass::Client, client::account_data::delete_tag);
    t.add(LimitClass::Client, client::presence::get_presence);
    t.add(LimitClass::Client, client::presence::set_presence);

    // End-to-end encryption: keys, cross-signing, to-device messages, key backup.
    t.add(LimitClass::KeyUpload, client::keys::upload_keys);
    t.add(LimitClass::Client, client::keys::get_keys);
    t.add(LimitClass::Client, client::keys::claim_keys);
    t.add(LimitClass::Client, client::keys::get_key_changes);
    t.add(LimitClass::Client, client::keys::upload_signing_keys);
    t.add(LimitClass::Client, client::keys::upload_signatures);
    t.add(LimitClass::ToDevice, client::to_device::send_event_to_device);
    t.add(LimitClass::Client, client::backup::create_backup_version);
    t.add(LimitClass::Client, client::backup::get_latest_backup_info);
    t.add(LimitClass::Client, client::backup::get_backup_info);
    t.add(LimitClass::Client, client::backup::update_backup_version);
    t.add(LimitClass::Client, client::backup::delete_backup_version);
    t.add(LimitClass::Client, client::backup::add_backup_keys);
    t.add(LimitClass::Client, client::backup::add_backup_keys_for_room);
    t.add(LimitClass::Client, client::backup::add_backup_keys_for_session);
    t.add(LimitClass::Client, client::backup::get_backup_keys);
    t.add(LimitClass::Client, client::backup::get_backup_keys_for_room);
    t.add(LimitClass::Client, client::backup::get_backup_keys_for_session);
    t.add(LimitClass::Client, client::backup::delete_backup_keys);
    t.add(LimitClass::Client, client::backup::delete_backup_keys_for_room);
    t.add(LimitClass::Client, client::backup::delete_backup_keys_for_session);

    // People and calls: the user directory, spaces, OpenID tokens, TURN, MatrixRTC transports.
    t.add(LimitClass::Client, client::user_directory::search_users);
    t.add_json(LimitClass::Client, client::space::get_hierarchy);
    t.add(LimitClass::Client, client::openid::request_openid_token);
    t.add_json(LimitClass::Client, client::voip::get_turn_server_info);
    t.add(LimitClass::Client, client::voip::get_rtc_transports);

    // Reporting content.
    t.add(LimitClass::Client, client::reporting::report_content);
    t.add(LimitClass::Client, client::reporting::report_room);
    t.add(LimitClass::Client, client::reporting::report_user);

    // Application services: the ping (the rest of their API is on the services' side).
    client::appservice_ping::configure(&mut t);

    // Third-party networks (bridged by application services).
    t.add(LimitClass::Client, client::thirdparty::get_protocols);
    t.add(LimitClass::Client, client::thirdparty::get_protocol);
    t.add(LimitClass::Client, client::thirdparty::get_location_for_protocol);
    t.add(LimitClass::Client, client::thirdparty::get_location_for_room_alias);
    t.add(LimitClass::Client, client::thirdparty::get_user_for_protocol);
    t.add(LimitClass::Client, client::thirdparty::get_user_for_user_id);

    // Content repository: JSON endpoints here, streaming ones (upload, download, thumbnail) as
    // raw handlers.
    t.add(LimitClass::Client, client::media::config);
    t.add(LimitClass::Client, client::media::legacy_config);
    t.add(LimitClass::Client, client::media::create);
    t.add(LimitClass::Client, client::media::preview_url);

    // The OAuth 2.0 API: metadata on ruma's paths, form-encoded endpoints and HTML pages as raw
    // handlers (they answer 404 M_UNRECOGNIZED when `oauth.enabled` is false). The
    // streaming media endpoints are raw handlers too. Those under `/_matrix/` go in the table:
    // it groups paths by prefix (`RouteTable::mount`), and a group answers every request under
    // its prefix, so no path under one may be mounted outside it.
    client::oauth::configure(&mut t, cfg);
    client::media::configure_streaming(&mut t);
    t.mount(cfg);
    client::oauth_pages::configure(cfg);
}
