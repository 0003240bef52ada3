//! Thumbnails of PNG, JPEG, GIF and WebP images, `crop` and `scale`: the usual sizes are made
//! in the background after an upload, others on demand; all are cached in
//! `mediathumb_thumbnail`.
//!
//! An image's dimensions are read from its header first, and an image with more pixels than
//! `media.max_image_pixels` is refused (413 `M_TOO_LARGE`) without being decoded, so a
//! decompression bomb costs nothing. Decoding also runs with the `image` crate's allocation
//! limits, on the blocking pool, at most one image per core at a time.

use std::{io::Cursor, sync::Arc};

use http::StatusCode;
use image::{DynamicImage, ImageFormat, ImageReader, Limits, imageops::FilterType};
use ruma::api::error::ErrorKind;

use super::{Media, store};
use crate::{
    Error, Result,
    storage::tables::media::{MediaTable, ThumbnailRecord},
};

/// Largest original read into memory to make a thumbnail.
const MAX_SOURCE_BYTES: u64 = 64 << 20;
/// Largest thumbnail made on demand, per side.
const MAX_SIDE: u32 = 1600;

/// How a thumbnail fits its box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Fill the box exactly, cropping what overflows.
    Crop,
    /// Fit inside the box, keeping the aspect ratio.
    Scale,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

/// The sizes made right after an upload (Synapse's defaults).
const PREGENERATED: [(u32, u32, Method); 5] = [
    (32, 32, Method::Crop),
    (96, 96, Method::Crop),
    (320, 240, Method::Scale),
    (640, 480, Method::Scale),
    (800, 600, Method::Scale),
];

/// A thumbnail to send.
#[derive(Clone, Debug)]
pub struct Thumbnail {
    /// Its `Content-Type`.
    pub content_type: String,
    /// The image.
    pub bytes: Vec<u8>,
}

/// Whether media of this type can be thumbnailed.
pub fn is_thumbnailable(content_type: Option<&str>) -> bool {
    let essence = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "image/png" | "image/jpeg" | "image/jpg" | "image/gif" | "image/webp"
    )
}

/// Decoding limits and the pool of decoding slots.
#[derive(Clone)]
pub(super) struct Thumbnailer {
    max_pixels: u64,
    slots: Arc<tokio::sync::Semaphore>,
}

fn cannot(message: impl Into<String>) -> Error {
    Error::new(StatusCode::BAD_REQUEST, ErrorKind::Unknown, message)
}

fn spec_key(w: u32, h: u32, method: Method) -> String {
    format!("{w}x{h}-{}", method.name())
}

/// The box actually rendered for a request: the smallest pre-generated size of the same method
/// that covers it, or the request itself (bounded) for on-demand thumbnails.
fn choose(width: u32, height: u32, method: Method) -> (u32, u32) {
    PREGENERATED
        .iter()
        .filter(|(w, h, m)| *m == method && *w >= width && *h >= height)
        .min_by_key(|(w, h, _)| w * h)
        .map(|(w, h, _)| (*w, *h))
        .unwrap_or((width.min(MAX_SIDE), height.min(MAX_SIDE)))
}

impl Thumbnailer {
    pub(super) fn new(max_pixels: u64) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            max_pixels,
            slots: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }

    /// Waits for a decoding slot: held while the original is in memory and decoded, so
    /// concurrent requests cannot pile up originals.
    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.slots
            .acquire()
            .await
            .map_err(|_| Error::internal("thumbnail slots closed"))
    }
}

/// Reads the format and dimensions from the header and refuses images over the pixel limit.
fn checked_header(bytes: &[u8], max_pixels: u64) -> Result<(ImageFormat, u32, u32)> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| cannot(format!("Cannot read the image: {e}")))?;
    let format = reader
        .format()
        .ok_or_else(|| cannot("Not an image format Hearth can read"))?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP
    ) {
        return Err(cannot("Not an image format Hearth can thumbnail"));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| cannot(format!("Cannot read the image header: {e}")))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(Error::too_large(format!(
            "The image has {w}x{h} pixels, more than the server thumbnails"
        )));
    }
    Ok((format, w, h))
}

/// Decodes the (first frame of the) image, within the checked dimensions.
fn decode(bytes: &[u8], w: u32, h: u32) -> Result<DynamicImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| cannot(format!("Cannot read the image: {e}")))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some((u64::from(w) * u64::from(h) * 8).max(1 << 20));
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| cannot(format!("Cannot decode the image: {e}")))
}

fn is_animated(bytes: &[u8], format: ImageFormat) -> bool {
    use image::AnimationDecoder;
    match format {
        ImageFormat::Gif => image::codecs::gif::GifDecoder::new(Cursor::new(bytes))
            .map(|d| d.into_frames().take(2).count() == 2)
            .unwrap_or(false),
        ImageFormat::WebP => image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))
            .map(|d| d.has_animation())
            .unwrap_or(false),
        _ => false,
    }
}

/// Resizes without upscaling and encodes: JPEG stays JPEG, everything else becomes PNG.
fn render(image: &DynamicImage, format: ImageFormat, width: u32, height: u32, method: Method) -> Result<Thumbnail> {
    let (ow, oh) = (image.width(), image.height());
    let resized = match method {
        Method::Scale if ow <= width && oh <= height => image.clone(),
        Method::Scale => image.resize(width, height, FilterType::Triangle),
        Method::Crop => {
            // Never upscale: shrink the box (keeping its shape) until the image covers it.
            let f = (f64::from(ow) / f64::from(width))
                .min(f64::from(oh) / f64::from(height))
                .min(1.0);
            let (w, h) = (
                ((f64::from(width) * f).round() as u32).max(1),
                ((f64::from(height) * f).round() as u32).max(1),
            );
            image.resize_to_fill(w, h, FilterType::Triangle)
        }
    };
    let mut out = Cursor::new(Vec::new());
    let content_type = if format == ImageFormat::Jpeg {
        DynamicImage::ImageRgb8(resized.to_rgb8())
            .write_to(&mut out, ImageFormat::Jpeg)
            .map_err(|e| Error::internal(format!("encoding a thumbnail: {e}")))?;
        "image/jpeg"
    } else {
        resized
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|e| Error::internal(format!("encoding a thumbnail: {e}")))?;
        "image/png"
    };
    Ok(Thumbnail {
        content_type: content_type.to_owned(),
        bytes: out.into_inner(),
    })
}

impl Media {
    /// A thumbnail: the cached one, or one made now (and cached). With `animated`, an animated
    /// GIF or WebP that already fits the box is returned as it is. Given `federation`, another
    /// server's media is fetched (and cached) first and thumbnailed here, as Synapse does by
    /// default; without it only our own media (and what the cache holds) is found.
    #[allow(clippy::too_many_arguments)]
    pub async fn thumbnail(
        &self,
        federation: Option<&crate::services::federation::Federation>,
        server: &ruma::ServerName,
        media_id: &str,
        width: u32,
        height: u32,
        method: Method,
        animated: bool,
        wait: std::time::Duration,
    ) -> Result<Thumbnail> {
        if width == 0 || height == 0 {
            return Err(Error::invalid_param("width and height must be positive"));
        }
        let info = match federation {
            Some(federation) => self.get_or_fetch(federation, server, media_id, wait).await?,
            None => self.get(server, media_id, wait).await?,
        };
        if !is_thumbnailable(info.content_type.as_deref()) {
            return Err(cannot("This media is not an image Hearth can thumbnail"));
        }
        let (w, h) = choose(width, height, method);
        let key = spec_key(w, h, method);
        if !animated && let Some(cached) = self.table.thumbnail(server.as_str(), media_id, &key)? {
            return Ok(Thumbnail {
                content_type: cached.content_type,
                bytes: cached.bytes,
            });
        }
        let slot = self.thumbnails.slot().await?;
        let bytes = store::read_all(&self.table, &info.blob, MAX_SOURCE_BYTES).await?;
        let max_pixels = self.thumbnails.max_pixels;
        let original_type = info.content_type.clone().unwrap_or_default();
        let made = store::blocking(move || {
            let (format, ow, oh) = checked_header(&bytes, max_pixels)?;
            if animated && ow <= width && oh <= height && is_animated(&bytes, format) {
                return Ok((
                    Thumbnail {
                        content_type: original_type,
                        bytes,
                    },
                    false,
                ));
            }
            let image = decode(&bytes, ow, oh)?;
            Ok((render(&image, format, w, h, method)?, true))
        })
        .await?;
        drop(slot);
        let (thumb, cache) = made;
        if cache {
            let record = ThumbnailRecord {
                content_type: thumb.content_type.clone(),
                bytes: thumb.bytes.clone(),
            };
            let (table, server, id) = (self.table.clone(), server.to_string(), media_id.to_owned());
            store::blocking(move || Ok(table.put_thumbnail(&server, &id, &key, &record)?)).await?;
        }
        Ok(thumb)
    }

    /// Makes the usual sizes in the background after an upload.
    pub(super) fn pregenerate_thumbnails(&self, server: String, media_id: String) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (table, thumbnailer) = (self.table.clone(), self.thumbnails.clone());
        runtime.spawn(async move {
            if let Err(e) = pregenerate(&table, &thumbnailer, &server, &media_id).await {
                tracing::debug!(%media_id, "no thumbnails made: {e}");
            }
        });
    }
}

async fn pregenerate(table: &MediaTable, thumbnailer: &Thumbnailer, server: &str, media_id: &str) -> Result<()> {
    let Some(record) = table.get(server, media_id)? else {
        return Ok(());
    };
    let Some(content) = record.content else {
        return Ok(());
    };
    let Some(blob) = table.blob(&content.hash)? else {
        return Ok(());
    };
    let _slot = thumbnailer.slot().await?;
    let bytes = store::read_all(table, &blob, MAX_SOURCE_BYTES).await?;
    let max_pixels = thumbnailer.max_pixels;
    let (table, server, media_id) = (table.clone(), server.to_owned(), media_id.to_owned());
    store::blocking(move || {
        let (format, ow, oh) = checked_header(&bytes, max_pixels)?;
        let image = decode(&bytes, ow, oh)?;
        drop(bytes);
        for (w, h, method) in PREGENERATED {
            let thumb = render(&image, format, w, h, method)?;
            table.put_thumbnail(
                &server,
                &media_id,
                &spec_key(w, h, method),
                &ThumbnailRecord {
                    content_type: thumb.content_type,
                    bytes: thumb.bytes,
                },
            )?;
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_pregenerated_sizes_or_bounded_boxes() {
        assert_eq!(choose(32, 32, Method::Crop), (32, 32));
        assert_eq!(choose(50, 40, Method::Crop), (96, 96));
        assert_eq!(choose(300, 200, Method::Scale), (320, 240));
        assert_eq!(choose(96, 96, Method::Scale), (320, 240));
        assert_eq!(choose(200, 200, Method::Crop), (200, 200));
        assert_eq!(choose(5000, 5000, Method::Scale), (MAX_SIDE, MAX_SIDE));
    }

    #[test]
    fn a_bomb_header_is_refused_before_decoding() {
        // A PNG whose IHDR claims 100000 x 100000 pixels, with a token IDAT.
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [
            (&b"IHDR"[..], &ihdr[..]),
            (b"IDAT", &[0x78, 0x9c, 0x03, 0, 0, 0, 0, 1]),
            (b"IEND", &[]),
        ] {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            png.extend_from_slice(&body);
            png.extend_from_slice(&crc32(&body).to_be_bytes());
        }
        let err = checked_header(&png, 32_000_000).unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
