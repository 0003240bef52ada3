//! URL previews (`/preview_url`): the page is fetched through [`super::fetch`] (which applies
//! the [`super::ssrf`] address policy on every hop), its OpenGraph tags are read (falling back
//! to `<title>` and the description meta tag), its `og:image` is fetched the same way and stored
//! as media (the preview carries its `mxc://` URI), and the result is cached for an hour.

use std::time::Duration;

use http::StatusCode;
use ruma::api::error::ErrorKind;
use serde_json::{Map, Value};

use super::{Media, fetch, ssrf::AddressPolicy};
use crate::{
    Error, Result,
    config::MediaConfig,
    storage::tables::media::{MediaTable, PreviewRecord},
    util,
};

const CACHE_MS: u64 = 3_600_000;
const MAX_VALUE_CHARS: usize = 1000;

/// Preview settings and the cache.
pub(super) struct Previews {
    table: MediaTable,
    policy: AddressPolicy,
    enabled: bool,
    max_bytes: usize,
    timeout: Duration,
}

impl Previews {
    pub(super) fn new(table: MediaTable, policy: AddressPolicy, config: &MediaConfig) -> Self {
        fetch::init_tls(&config.url_preview_extra_roots);
        Self {
            table,
            policy,
            enabled: config.url_preview_enabled,
            max_bytes: config.url_preview_max_bytes,
            timeout: config.url_preview_timeout,
        }
    }
}

impl Media {
    /// The OpenGraph data of a page, from the cache when fresh.
    pub async fn preview_url(&self, url: &str, user: &ruma::UserId) -> Result<Value> {
        let p = &self.previews;
        if !p.enabled {
            return Err(Error::new(
                StatusCode::FORBIDDEN,
                ErrorKind::Unknown,
                "URL previews are disabled on this server",
            ));
        }
        fetch::parse_url(url)?;
        if let Some(cached) = p.table.preview(url)?
            && cached.fetched_ms + CACHE_MS > util::now_ms()
        {
            return serde_json::from_str(&cached.json).map_err(|e| Error::internal(e.to_string()));
        }
        let page = fetch::fetch(url, &p.policy, p.max_bytes, p.timeout).await?;
        let is_html = page
            .content_type
            .as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().contains("html"));
        let mut og = if is_html {
            opengraph(&String::from_utf8_lossy(&page.body))
        } else {
            Map::new()
        };
        og.entry("og:url").or_insert_with(|| url.into());
        if let Some(Value::String(image)) = og.remove("og:image") {
            match self.preview_image(url, &image, user).await {
                Ok((mxc, content_type, size)) => {
                    og.insert("og:image".into(), mxc.to_string().into());
                    og.insert("og:image:type".into(), content_type.into());
                    og.insert("matrix:image:size".into(), size.into());
                }
                Err(e) => tracing::debug!(%image, "preview image skipped: {e}"),
            }
        }
        let value = Value::Object(og);
        let record = PreviewRecord {
            fetched_ms: util::now_ms(),
            json: value.to_string(),
        };
        let (table, key) = (p.table.clone(), url.to_owned());
        super::store::blocking(move || Ok(table.put_preview(&key, &record)?)).await?;
        Ok(value)
    }
}

impl Media {
    /// Fetches a preview's image (same address policy and limits) and stores it as media.
    async fn preview_image(
        &self,
        page: &str,
        image: &str,
        user: &ruma::UserId,
    ) -> Result<(ruma::OwnedMxcUri, String, u64)> {
        let p = &self.previews;
        let url = fetch::resolve(page, image)?;
        let fetched = fetch::fetch(&url, &p.policy, p.max_bytes, p.timeout).await?;
        let content_type = fetched.content_type.unwrap_or_default();
        if !content_type.to_ascii_lowercase().starts_with("image/") || fetched.body.len() >= p.max_bytes {
            return Err(Error::invalid_param("not an image, or too large"));
        }
        let size = fetched.body.len() as u64;
        let mut upload = self.begin_upload(user, super::UploadTarget::New)?;
        upload.write(&fetched.body).await?;
        let mxc = upload.finish(Some(content_type.clone()), None).await?;
        Ok((mxc, content_type, size))
    }
}

/// The `og:*` meta tags of a page, with `<title>` and `description` as fallbacks.
pub(super) fn opengraph(html: &str) -> Map<String, Value> {
    let lower = html.to_ascii_lowercase();
    let mut og = Map::new();
    let mut description = None;
    let mut at = 0;
    while let Some(start) = lower[at..].find("<meta") {
        let start = at + start;
        let Some(end) = lower[start..].find('>') else {
            break;
        };
        let tag = &html[start + 5..start + end];
        at = start + end;
        let attrs = attributes(tag);
        let get = |name: &str| attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let Some(content) = get("content") else {
            continue;
        };
        let content: String = content.chars().take(MAX_VALUE_CHARS).collect();
        match get("property").or_else(|| get("name")) {
            Some(key) if key.starts_with("og:") && !key.starts_with("og:image:") => {
                og.entry(key).or_insert(Value::String(content));
            }
            Some(key) if key.eq_ignore_ascii_case("description") => description = Some(content),
            _ => {}
        }
    }
    if !og.contains_key("og:title")
        && let Some(start) = lower.find("<title")
        && let Some(open_end) = lower[start..].find('>')
        && let Some(close) = lower[start..].find("</title")
    {
        let text = &html[start + open_end + 1..start + close];
        let title: String = decode_entities(text.trim()).chars().take(MAX_VALUE_CHARS).collect();
        if !title.is_empty() {
            og.insert("og:title".into(), title.into());
        }
    }
    if !og.contains_key("og:description")
        && let Some(d) = description
    {
        og.insert("og:description".into(), d.into());
    }
    og
}

/// The attributes of a tag's inside, names lower-cased, values entity-decoded.
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let chars: Vec<char> = tag.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == '/') {
            i += 1;
        }
        let name_start = i;
        while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '=' && chars[i] != '/' {
            i += 1;
        }
        let name: String = chars[name_start..i].iter().collect::<String>().to_ascii_lowercase();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '=' {
            i += 1;
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i < chars.len() && (chars[i] == '"' || chars[i] == '\'') {
                let quote = chars[i];
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != quote {
                    i += 1;
                }
                value = chars[start..i].iter().collect();
                i += 1;
            } else {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() {
                    i += 1;
                }
                value = chars[start..i].iter().collect();
            }
        }
        if !name.is_empty() {
            out.push((name, decode_entities(&value)));
        }
        if i == name_start {
            i += 1;
        }
    }
    out
}

fn decode_entities(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opengraph_tags_and_fallbacks() {
        let og = opengraph(
            r#"<html><head><title>Fallback &amp; more</title>
            <META property="og:title" content="The &quot;Title&quot;">
            <meta name=description content='A page'>
            <meta property="og:type" content="website" />
            <meta property="og:image" content="http://10.0.0.1/x.png"></head></html>"#,
        );
        assert_eq!(og["og:title"], "The \"Title\"");
        assert_eq!(og["og:type"], "website");
        assert_eq!(og["og:description"], "A page");
        assert_eq!(
            og["og:image"], "http://10.0.0.1/x.png",
            "fetched later, through the policy"
        );
        let og = opengraph("<title>Only a title</title>");
        assert_eq!(og["og:title"], "Only a title");
    }
}
