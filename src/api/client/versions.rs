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

/// The spec versions Hearth speaks.
pub const VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12",
];

/// `GET /_matrix/client/versions`
pub async fn get_supported_versions(
    _ctx: Ctx,
    _req: get_supported_versions::Request,
) -> Result<get_supported_versions::Response> {
    let mut unstable = BTreeMap::new();
    unstable.insert("org.matrix.msc2432".to_owned(), true);
    let mut response = get_supported_versions::Response::new(VERSIONS.iter().map(|v| (*v).to_owned()).collect());
    response.unstable_features = unstable;
    Ok(response)
}

/// `GET /_matrix/client/v3/capabilities`
pub async fn get_capabilities(_ctx: Ctx, _req: capabilities::Request) -> Result<capabilities::Response> {
    let mut caps = Capabilities::new();
    let available = [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12]
        .into_iter()
        .map(|v| (v, RoomVersionStability::Stable))
        .collect();
    caps.room_versions = RoomVersionsCapability::new(RoomVersionId::V12, available);
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
