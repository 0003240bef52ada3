//! `GET /_matrix/client/versions` and `GET /_matrix/client/v3/capabilities`.
//!
//! Spec: client-server-api "Supported versions" and "Capabilities negotiation"
//! (`data/api/client-server/versions.yaml`, `capabilities.yaml`).

use std::collections::BTreeMap;

use ruma::{
    RoomVersionId,
    api::client::discovery::{
        get_capabilities::v3::{
            self as capabilities, Capabilities, ProfileFieldsCapability, RoomVersionStability, RoomVersionsCapability,
        },
        get_supported_versions,
    },
};

use crate::{Result, api::extract::Ctx};

/// The spec versions Hearth speaks: every one whose client-server changes it serves. v1.13
/// and v1.14 add room and user reports and requestToken error codes; v1.15 room summaries
/// (the OAuth API it adds is optional: `auth_metadata` answers 404 `M_UNRECOGNIZED`); v1.16
/// custom profile fields, `format=event`, `use_state_after`, room version 12 and
/// `m.room.create` in invite state. Not yet: v1.17 (`m.oauth` UIA with the OAuth API), v1.18
/// (admin lock/suspend endpoints, invite blocking), v1.19 (`mutual_rooms`).
pub const VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16",
];

/// `GET /_matrix/client/versions`
pub async fn get_supported_versions(
    _ctx: Ctx,
    _req: get_supported_versions::Request,
) -> Result<get_supported_versions::Response> {
    let mut unstable = BTreeMap::new();
    unstable.insert("org.matrix.msc2432".to_owned(), true);
    // Cross-signing (spec v1.1); Element still asks for it by this name.
    unstable.insert("org.matrix.e2e_cross_signing".to_owned(), true);
    // Simplified sliding sync (MSC4186), the form Element X uses.
    unstable.insert("org.matrix.simplified_msc3575".to_owned(), true);
    // Thread subscriptions (MSC4306) and their sliding-sync extension (MSC4308).
    unstable.insert("org.matrix.msc4306".to_owned(), true);
    let mut response = get_supported_versions::Response::new(VERSIONS.iter().map(|v| (*v).to_owned()).collect());
    response.unstable_features = unstable;
    Ok(response)
}

/// `GET /_matrix/client/v3/capabilities`
pub async fn get_capabilities(ctx: Ctx, _req: capabilities::Request) -> Result<capabilities::Response> {
    let mut caps = Capabilities::new();
    let available = crate::config::NEW_ROOM_VERSIONS
        .iter()
        .filter_map(|v| RoomVersionId::try_from(*v).ok())
        .map(|v| (v, RoomVersionStability::Stable))
        .collect();
    caps.room_versions = RoomVersionsCapability::new(ctx.services.config.default_room_version.clone(), available);
    caps.change_password.enabled = true;
    caps.profile_fields = Some(ProfileFieldsCapability::new(true));
    // Still read by clients older than spec v1.16.
    #[allow(deprecated)]
    {
        caps.set_displayname.enabled = true;
        caps.set_avatar_url.enabled = true;
    }
    caps.thirdparty_id_changes.enabled = false;
    caps.get_login_token.enabled = false;
    Ok(capabilities::Response::new(caps))
}
