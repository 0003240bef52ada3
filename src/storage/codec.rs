//! Byte encodings shared by every table: composite keys and postcard records.
//!
//! Composite keys join their parts with [`SEP`] (0xFF). Matrix identifiers are UTF-8, and 0xFF
//! never occurs in UTF-8, so a part can never contain the separator and prefix scans over
//! `part1 SEP` are exact. Numbers inside keys are big-endian so byte order is numeric order.

use serde::{Serialize, de::DeserializeOwned};

use super::{StorageError, StorageResult};

/// Separator between the parts of a composite key.
pub const SEP: u8 = 0xFF;

/// Joins key parts with [`SEP`].
pub fn key(parts: &[&[u8]]) -> Vec<u8> {
    let len = parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        out.extend_from_slice(part);
    }
    out
}

/// The prefix that selects every key whose first parts are `parts` (ends with [`SEP`]).
pub fn prefix(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = key(parts);
    out.push(SEP);
    out
}

/// Splits a composite key back into its parts.
pub fn split(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    key.split(|b| *b == SEP)
}

/// A u64 as 8 big-endian bytes (sorts numerically).
pub fn u64_bytes(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Reads a big-endian u64 written by [`u64_bytes`].
pub fn read_u64(table: &'static str, bytes: &[u8]) -> StorageResult<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        table,
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// Encodes an internal record with postcard.
pub fn encode<T: Serialize>(table: &'static str, record: &T) -> StorageResult<Vec<u8>> {
    postcard::to_allocvec(record).map_err(|e| StorageError::Corrupt {
        table,
        reason: format!("encode: {e}"),
    })
}

/// Decodes a postcard record read from `table`.
pub fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> StorageResult<T> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Corrupt {
        table,
        reason: format!("decode: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_keys_round_trip() {
        let k = key(&[b"@alice:hearth", b"DEVICE"]);
        let parts: Vec<&[u8]> = split(&k).collect();
        assert_eq!(parts, vec![&b"@alice:hearth"[..], &b"DEVICE"[..]]);
        assert!(k.starts_with(&prefix(&[b"@alice:hearth"])));
        assert!(!key(&[b"@alice:hearth2", b"X"]).starts_with(&prefix(&[b"@alice:hearth"])));
    }

    #[test]
    fn numbers_sort_as_bytes() {
        assert!(u64_bytes(255) < u64_bytes(256));
        assert_eq!(read_u64("t", &u64_bytes(42)).unwrap(), 42);
        assert!(read_u64("t", b"short").is_err());
    }

    #[test]
    fn records_round_trip() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct R {
            a: String,
            b: Option<u64>,
            c: bool,
        }
        let r = R {
            a: "x".into(),
            b: Some(7),
            c: true,
        };
        let bytes = encode("t", &r).unwrap();
        assert_eq!(decode::<R>("t", &bytes).unwrap(), r);
        assert!(decode::<R>("t", &[0xff, 0xff, 0xff]).is_err());
    }
}
