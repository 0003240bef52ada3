//! One application service as registered: its registration file (YAML, the spec's
//! "Registration" with ruma's `Registration`, plus the MSC2409/MSC3202/MSC4190 flags bridges
//! set) read and checked, its namespaces compiled. A namespace regex matches from the start of
//! the user id, alias or room id (as Synapse's `re.match`); a user is in the service's
//! namespace when a users regex matches it or it is the service's own sender.

use std::path::Path;

use regex::Regex;
use ruma::{OwnedUserId, RoomAliasId, RoomId, ServerName, UserId, api::appservice::Registration};
use serde::Deserialize;

/// A registration file as written: ruma's `Registration` and the unstable flags.
#[derive(Deserialize)]
struct RegistrationFile {
    #[serde(flatten)]
    registration: Registration,
    /// MSC2409's name for `receive_ephemeral`, which mautrix bridges write.
    #[serde(rename = "de.sorunome.msc2409.push_ephemeral", default)]
    push_ephemeral: bool,
    /// MSC3202: device lists and one-time key counts of namespace users in transactions,
    /// and masquerading as a device.
    #[serde(rename = "org.matrix.msc3202", default)]
    msc3202: bool,
    /// MSC4190: devices of namespace users created and deleted without user-interactive auth.
    #[serde(rename = "io.element.msc4190", default)]
    msc4190: bool,
}

/// One namespace entry, compiled.
#[derive(Debug)]
struct Pattern {
    regex: Regex,
    exclusive: bool,
}

impl Pattern {
    fn matches(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

/// An application service, checked and ready.
#[derive(Debug)]
pub struct Registered {
    /// The registration as read.
    pub registration: Registration,
    /// Where the registration was read from (for messages).
    pub source: String,
    /// The service's own user (`sender_localpart` on this server).
    pub sender: OwnedUserId,
    /// Ephemeral events (typing, receipts, presence) and to-device go in its transactions.
    pub receive_ephemeral: bool,
    /// MSC3202 is on for it.
    pub msc3202: bool,
    /// MSC4190 is on for it.
    pub msc4190: bool,
    users: Vec<Pattern>,
    aliases: Vec<Pattern>,
    rooms: Vec<Pattern>,
}

/// Why a registration cannot be used: the file and the field, then what is wrong.
pub fn invalid(source: &str, field: &str, what: impl std::fmt::Display) -> String {
    format!("appservice registration {source}: {field}: {what}")
}

impl Registered {
    /// Reads and checks the registration file at `path` for a server named `server_name`.
    pub fn read(path: &Path, server_name: &ServerName) -> Result<Registered, String> {
        let source = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read appservice registration {source}: {e}"))?;
        Self::parse(&source, &text, server_name)
    }

    /// Checks the registration `text` (YAML) read from `source`.
    pub fn parse(source: &str, text: &str, server_name: &ServerName) -> Result<Registered, String> {
        let file: RegistrationFile = yaml_serde::from_str(text).map_err(|e| {
            let location = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            format!("appservice registration {source} is not a valid registration{location}: {e}")
        })?;
        let registration = file.registration;
        let check_non_empty = |field: &str, value: &str| {
            if value.trim().is_empty() {
                Err(invalid(source, field, "must not be empty"))
            } else {
                Ok(())
            }
        };
        check_non_empty("id", &registration.id)?;
        check_non_empty("as_token", &registration.as_token)?;
        check_non_empty("hs_token", &registration.hs_token)?;
        if registration.as_token == registration.hs_token {
            return Err(invalid(source, "hs_token", "must differ from as_token"));
        }
        if let Some(url) = &registration.url
            && url::Url::parse(url)
                .map(|u| !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
        {
            return Err(invalid(source, "url", format!("{url:?} is not an http(s) URL")));
        }
        let sender = UserId::parse(format!("@{}:{server_name}", registration.sender_localpart))
            .and_then(|user| user.validate_strict().map(|()| user))
            .map_err(|e| invalid(source, "sender_localpart", e))?;
        let compile = |kind: &str, list: &[ruma::api::appservice::Namespace]| -> Result<Vec<Pattern>, String> {
            list.iter()
                .enumerate()
                .map(|(i, namespace)| {
                    let field = format!("namespaces.{kind}[{i}].regex");
                    let regex =
                        Regex::new(&format!("^(?:{})", namespace.regex)).map_err(|e| invalid(source, &field, e))?;
                    Ok(Pattern {
                        regex,
                        exclusive: namespace.exclusive,
                    })
                })
                .collect()
        };
        Ok(Registered {
            users: compile("users", &registration.namespaces.users)?,
            aliases: compile("aliases", &registration.namespaces.aliases)?,
            rooms: compile("rooms", &registration.namespaces.rooms)?,
            receive_ephemeral: registration.receive_ephemeral || file.push_ephemeral,
            msc3202: file.msc3202,
            msc4190: file.msc4190,
            source: source.to_owned(),
            sender,
            registration,
        })
    }

    /// The service's id.
    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// Whether `user_id` is the service's sender or matches one of its users regexes.
    pub fn is_user_in_namespace(&self, user_id: &UserId) -> bool {
        user_id == self.sender || self.users.iter().any(|p| p.matches(user_id.as_str()))
    }

    /// Whether `user_id` matches one of its exclusive users regexes.
    pub fn is_user_exclusive(&self, user_id: &UserId) -> bool {
        self.users.iter().any(|p| p.exclusive && p.matches(user_id.as_str()))
    }

    /// Whether `alias` matches one of its aliases regexes.
    pub fn is_alias_in_namespace(&self, alias: &RoomAliasId) -> bool {
        self.aliases.iter().any(|p| p.matches(alias.as_str()))
    }

    /// Whether `alias` matches one of its exclusive aliases regexes.
    pub fn is_alias_exclusive(&self, alias: &RoomAliasId) -> bool {
        self.aliases.iter().any(|p| p.exclusive && p.matches(alias.as_str()))
    }

    /// Whether `room_id` matches one of its rooms regexes.
    pub fn is_room_in_namespace(&self, room_id: &RoomId) -> bool {
        self.rooms.iter().any(|p| p.matches(room_id.as_str()))
    }

    /// The exclusive regexes of one kind (`users`, `aliases`, `rooms`), as written.
    pub(super) fn exclusive_regexes(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let kinds = [
            ("users", &self.registration.namespaces.users),
            ("aliases", &self.registration.namespaces.aliases),
            ("rooms", &self.registration.namespaces.rooms),
        ];
        kinds.into_iter().flat_map(|(kind, list)| {
            list.iter()
                .filter(|n| n.exclusive)
                .map(move |n| (kind, n.regex.as_str()))
        })
    }
}
