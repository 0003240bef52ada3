//! The `[media]` section (uploads, thumbnails, the legacy endpoints, URL previews), as read
//! (`RawMedia`) and as validated (`MediaConfig`); errors name the key.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{ConfigError, key_error};
use crate::services::media::ssrf::IpRange;

/// The `[media]` section, validated.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Largest upload, in bytes (413 `M_TOO_LARGE` above).
    pub max_upload_size: u64,
    /// Images with more pixels than this are not thumbnailed (and never decoded).
    pub max_image_pixels: u64,
    /// Asynchronous uploads (`/create`) a user may have pending at once.
    pub max_pending_uploads: usize,
    /// How long a `/create`d media id waits for its bytes.
    pub unused_expiration: Duration,
    /// Serve every local media on the legacy unauthenticated `/_matrix/media/v3/download` and
    /// `/thumbnail` endpoints.
    pub serve_legacy_unauthenticated: bool,
    /// Media created before this time (ms since the epoch) stays on the legacy endpoints.
    pub legacy_unauthenticated_before_ms: Option<u64>,
    /// URL previews on or off.
    pub url_preview_enabled: bool,
    /// Address ranges previews may never contact (besides the built-in private ranges).
    pub url_preview_ip_deny: Vec<IpRange>,
    /// Address ranges previews may contact even when the built-in rules deny them.
    pub url_preview_ip_allow: Vec<IpRange>,
    /// Largest page read for a preview, in bytes.
    pub url_preview_max_bytes: usize,
    /// Time limit for fetching one preview, redirects included.
    pub url_preview_timeout: Duration,
    /// Certificates (DER) trusted for `https://` previews besides the public web roots.
    pub url_preview_extra_roots: Vec<Vec<u8>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMedia {
    max_upload_size: u64,
    max_image_pixels: u64,
    max_pending_uploads: usize,
    unused_expiration_secs: u64,
    serve_legacy_unauthenticated: bool,
    legacy_unauthenticated_before: Option<u64>,
    url_preview_enabled: bool,
    url_preview_ip_deny: Vec<String>,
    url_preview_ip_allow: Vec<String>,
    url_preview_max_bytes: u64,
    url_preview_timeout_secs: u64,
    url_preview_extra_ca_file: Option<PathBuf>,
}

impl Default for RawMedia {
    fn default() -> Self {
        Self {
            max_upload_size: 100 << 20,
            max_image_pixels: 32_000_000,
            max_pending_uploads: 5,
            unused_expiration_secs: 86400,
            serve_legacy_unauthenticated: false,
            legacy_unauthenticated_before: None,
            url_preview_enabled: true,
            url_preview_ip_deny: Vec::new(),
            url_preview_ip_allow: Vec::new(),
            url_preview_max_bytes: 1 << 20,
            url_preview_timeout_secs: 10,
            url_preview_extra_ca_file: None,
        }
    }
}

impl RawMedia {
    pub(super) fn validate(self) -> Result<MediaConfig, ConfigError> {
        let ranges = |key: &str, list: &[String]| {
            list.iter()
                .map(|s| IpRange::parse(s).map_err(|e| key_error(key, e)))
                .collect::<Result<Vec<_>, _>>()
        };
        for (key, value) in [
            ("media.max_upload_size", self.max_upload_size),
            ("media.max_image_pixels", self.max_image_pixels),
            ("media.unused_expiration_secs", self.unused_expiration_secs),
            ("media.url_preview_max_bytes", self.url_preview_max_bytes),
            ("media.url_preview_timeout_secs", self.url_preview_timeout_secs),
        ] {
            if value == 0 {
                return Err(key_error(key, "must be at least 1"));
            }
        }
        Ok(MediaConfig {
            max_upload_size: self.max_upload_size,
            max_image_pixels: self.max_image_pixels,
            max_pending_uploads: self.max_pending_uploads,
            unused_expiration: Duration::from_secs(self.unused_expiration_secs),
            serve_legacy_unauthenticated: self.serve_legacy_unauthenticated,
            legacy_unauthenticated_before_ms: self.legacy_unauthenticated_before.map(|s| s.saturating_mul(1000)),
            url_preview_enabled: self.url_preview_enabled,
            url_preview_ip_deny: ranges("media.url_preview_ip_deny", &self.url_preview_ip_deny)?,
            url_preview_ip_allow: ranges("media.url_preview_ip_allow", &self.url_preview_ip_allow)?,
            url_preview_max_bytes: self.url_preview_max_bytes as usize,
            url_preview_timeout: Duration::from_secs(self.url_preview_timeout_secs),
            url_preview_extra_roots: match &self.url_preview_extra_ca_file {
                None => Vec::new(),
                Some(path) => crate::services::media::fetch::read_pem_certificates(path)
                    .map_err(|e| key_error("media.url_preview_extra_ca_file", e))?,
            },
        })
    }
}
