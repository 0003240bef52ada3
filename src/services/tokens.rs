//! The tokens Hearth hands to clients, as text, and reading them back.
//!
//! Every token names a point on the one global stream (`storage::positions`): "everything up
//! to position `P`". There are two shapes:
//!
//! | token         | handed out by                                   | names                     |
//! |---------------|-------------------------------------------------|---------------------------|
//! | `s{P}_e{E}`   | `/sync` `next_batch`                            | the whole stream up to `P`, and the ephemeral (typing, presence) counter up to `E` |
//! | `t{P}_r{R}`   | a room's `prev_batch` in `/sync`, `/messages` `start`/`end`, `/context` `start`/`end` | room `R` (its short id) up to `P` |
//!
//! A bare `{P}` is what Hearth handed out before these shapes existed; it is still read, as
//! the whole stream up to `P`.
//!
//! Where the spec takes a pagination token (`/messages?from=` and `to=`, `/members?at=`),
//! every shape is accepted: a sync token names a point in every room. A room token is only
//! accepted for its own room. `/sync?since=` and `keys/changes` take sync tokens (and bare
//! ones). A token past the current watermark was never handed out by this server and is
//! refused. Checking a token against a room and the watermark is `Rooms::pagination_point`.

use crate::{Error, Result};

/// A `/sync` token: a stream position and an ephemeral value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncToken {
    /// Everything durable up to here was sent.
    pub position: u64,
    /// Typing and presence up to here were sent.
    pub ephemeral: u64,
}

impl SyncToken {
    /// Reads a sync token (`s{P}_e{E}`, or a bare position). `param` names the parameter it
    /// came in, for the error.
    pub fn parse(param: &str, text: &str) -> Result<SyncToken> {
        match AnyToken::parse(text) {
            Some(AnyToken::Sync(token)) => Ok(token),
            Some(AnyToken::Bare(position)) => Ok(SyncToken { position, ephemeral: 0 }),
            Some(AnyToken::Room { .. }) => Err(invalid(param, text, "a room pagination token is not a sync token")),
            None => Err(invalid(param, text, "not a token this server hands out")),
        }
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}_e{}", self.position, self.ephemeral)
    }
}

/// A room pagination token: room `room` (short id) up to `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomToken {
    /// The stream position.
    pub position: u64,
    /// The room's short id.
    pub room: u64,
}

impl std::fmt::Display for RoomToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "t{}_r{}", self.position, self.room)
    }
}

/// Any token Hearth hands out, as read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyToken {
    /// `s{P}_e{E}`.
    Sync(SyncToken),
    /// `t{P}_r{R}`.
    Room(RoomToken),
    /// `{P}`, from before the shapes above.
    Bare(u64),
}

impl AnyToken {
    /// Reads any shape; `None` for anything else.
    pub fn parse(text: &str) -> Option<AnyToken> {
        // Digits only: `u64::from_str` alone would also take a leading `+`.
        let number = |s: &str| {
            (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        if let Some(position) = number(text) {
            return Some(AnyToken::Bare(position));
        }
        let (first, second) = text.split_once('_')?;
        let (kind, position) = (first.get(..1)?, number(first.get(1..)?)?);
        match (kind, second.split_at_checked(1)?) {
            ("s", ("e", ephemeral)) => Some(AnyToken::Sync(SyncToken {
                position,
                ephemeral: number(ephemeral)?,
            })),
            ("t", ("r", room)) => Some(AnyToken::Room(RoomToken {
                position,
                room: number(room)?,
            })),
            _ => None,
        }
    }

    /// The stream position the token names.
    pub fn position(&self) -> u64 {
        match *self {
            AnyToken::Sync(t) => t.position,
            AnyToken::Room(t) => t.position,
            AnyToken::Bare(p) => p,
        }
    }
}

/// 400 `M_INVALID_PARAM` naming the parameter, the token (shortened) and why.
pub fn invalid(param: &str, text: &str, why: &str) -> Error {
    let shown: String = text.chars().take(64).collect();
    let ellipsis = if shown.len() < text.len() { "…" } else { "" };
    Error::invalid_param(format!("Invalid {param} token \"{shown}{ellipsis}\": {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_round_trips() {
        let sync = SyncToken {
            position: 42,
            ephemeral: 1_700_000_000_123,
        };
        assert_eq!(AnyToken::parse(&sync.to_string()), Some(AnyToken::Sync(sync)));
        let room = RoomToken { position: 7, room: 3 };
        assert_eq!(AnyToken::parse(&room.to_string()), Some(AnyToken::Room(room)));
        assert_eq!(AnyToken::parse("17"), Some(AnyToken::Bare(17)));
        assert_eq!(SyncToken::parse("since", "17").unwrap().position, 17);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "s1",
            "x1_e2",
            "s1_x2",
            "s_e1",
            "s1_e",
            "+5",
            "-1",
            "s+1_e2",
            "t1_e2",
            "s1_r2",
            "t1_r2_x",
            "99999999999999999999999",
            "s1_e2_",
            "é1_e2",
            "t1_r",
            "🙂",
        ] {
            assert_eq!(AnyToken::parse(bad), None, "{bad:?}");
        }
        let err = SyncToken::parse("since", "t5_r1").unwrap_err();
        assert!(format!("{err:?}").contains("room pagination token"));
    }

    #[test]
    fn long_tokens_are_shortened_in_errors() {
        let long = "x".repeat(10_000);
        let message = format!("{:?}", invalid("from", &long, "bad"));
        assert!(message.len() < 400, "{message}");
    }
}
