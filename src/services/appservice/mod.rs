//! Application services (bridges, bots; the spec's Application Service API): the services
//! registered in `[appservices] registration_files`, read and checked at start-up
//! (`registration.rs`), and the questions the rest of the server asks about them: which service
//! an `as_token` belongs to, and which one holds a user id or alias exclusively. Two services
//! may not share an id or a token, nor claim the same exclusive namespace. The transactions
//! that push events to them, and the ping, are in `transactions/`.

pub mod client_server;
pub mod query;
pub mod registration;
pub mod transactions;

use std::{path::PathBuf, sync::Arc};

use ruma::{RoomAliasId, ServerName, UserId};

pub use registration::Registered;

/// Every registered application service.
#[derive(Debug, Default)]
pub struct Appservices {
    services: Vec<Arc<Registered>>,
    /// The HTTP client for questions to the services.
    outbound: query::Outbound,
    /// The queues of transactions to the services, once attached to storage
    /// ([`Appservices::attach`]).
    outbox: Option<transactions::Outbox>,
}

impl Appservices {
    /// Reads and checks every registration file; the error names the file and the field.
    pub fn load(files: &[PathBuf], server_name: &ServerName) -> Result<Appservices, String> {
        let services = files
            .iter()
            .map(|path| Registered::read(path, server_name))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(services)
    }

    /// The services given, checked against each other.
    pub fn new(services: Vec<Registered>) -> Result<Appservices, String> {
        for (i, a) in services.iter().enumerate() {
            for b in &services[..i] {
                let clash = |field: &str| {
                    format!(
                        "appservice registrations {} and {} have the same {field}",
                        b.source, a.source
                    )
                };
                if a.id() == b.id() {
                    return Err(clash("id"));
                }
                let tokens = [&a.registration.as_token, &a.registration.hs_token];
                if tokens.contains(&&b.registration.as_token) || tokens.contains(&&b.registration.hs_token) {
                    return Err(clash("token"));
                }
                if a.sender == b.sender {
                    return Err(clash("sender_localpart"));
                }
                for (kind, regex) in a.exclusive_regexes() {
                    if b.exclusive_regexes().any(|(k, r)| k == kind && r == regex) {
                        return Err(clash(&format!("exclusive namespaces.{kind} regex {regex:?}")));
                    }
                }
            }
        }
        Ok(Appservices {
            services: services.into_iter().map(Arc::new).collect(),
            outbound: query::Outbound::default(),
            outbox: None,
        })
    }

    /// The HTTP client for requests to the services ([`query::Outbound::send`]).
    pub fn outbound(&self) -> &query::Outbound {
        &self.outbound
    }

    /// Every service, in registration order.
    pub fn all(&self) -> &[Arc<Registered>] {
        &self.services
    }

    /// The service whose `as_token` this is. Tokens are compared by their SHA-256, so the time
    /// taken tells nothing about how much of a guess was right.
    pub fn by_as_token(&self, token: &str) -> Option<&Arc<Registered>> {
        let sha = |t: &str| ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        let given = sha(token);
        self.services
            .iter()
            .find(|s| sha(&s.registration.as_token).as_ref() == given.as_ref())
    }

    /// The service holding `user_id` exclusively (its sender included), if any.
    pub fn exclusive_owner_of_user(&self, user_id: &UserId) -> Option<&Arc<Registered>> {
        self.services
            .iter()
            .find(|s| s.sender == user_id || s.is_user_exclusive(user_id))
    }

    /// The service holding `alias` exclusively, if any.
    pub fn exclusive_owner_of_alias(&self, alias: &RoomAliasId) -> Option<&Arc<Registered>> {
        self.services.iter().find(|s| s.is_alias_exclusive(alias))
    }
}

#[cfg(test)]
mod tests {
    use ruma::{ServerName, UserId, room_alias_id};

    use super::{Appservices, Registered};

    const IRC: &str = "id: irc\nurl: http://127.0.0.1:9999\nas_token: as-irc\nhs_token: hs-irc\nsender_localpart: ircbot\nnamespaces:\n  users:\n    - exclusive: true\n      regex: '@irc_.*:example\\.org'\n  aliases:\n    - exclusive: true\n      regex: '#irc_.*'\n  rooms: []\nde.sorunome.msc2409.push_ephemeral: true\n";

    fn server() -> &'static ServerName {
        <&ServerName>::try_from("example.org").unwrap()
    }

    #[test]
    fn a_registration_is_read_with_its_namespaces_and_flags() {
        let irc = Registered::parse("irc.yaml", IRC, server()).unwrap();
        assert_eq!(irc.sender, "@ircbot:example.org");
        assert!(irc.receive_ephemeral);
        let user = |s: &str| UserId::parse(s).unwrap();
        assert!(irc.is_user_in_namespace(&user("@irc_alice:example.org")));
        assert!(irc.is_user_in_namespace(&user("@ircbot:example.org")));
        assert!(!irc.is_user_in_namespace(&user("@alice:example.org")));
        // Anchored at the start, as Synapse matches.
        assert!(!irc.is_user_in_namespace(&user("@x_irc_alice:example.org")));
        assert!(irc.is_alias_exclusive(room_alias_id!("#irc_chan:example.org")));
        let services = Appservices::new(vec![irc]).unwrap();
        assert!(services.by_as_token("as-irc").is_some());
        assert!(services.by_as_token("hs-irc").is_none());
        assert!(
            services
                .exclusive_owner_of_user(&user("@irc_bob:example.org"))
                .is_some()
        );
    }

    #[test]
    fn bad_registrations_are_refused_naming_the_file_and_field() {
        let cases = [
            (
                IRC.replace("'@irc_.*:example\\.org'", "'@irc_(:example'"),
                "namespaces.users[0].regex",
            ),
            (
                IRC.replace("sender_localpart: ircbot", "sender_localpart: 'a b'"),
                "sender_localpart",
            ),
            (IRC.replace("hs_token: hs-irc", "hs_token: as-irc"), "hs_token"),
            (IRC.replace("url: http://127.0.0.1:9999", "url: ftp://x"), "url"),
            (IRC.replace("as_token: as-irc\n", ""), "as_token"),
        ];
        for (text, field) in cases {
            let err = Registered::parse("irc.yaml", &text, server()).unwrap_err();
            assert!(err.contains("irc.yaml") && err.contains(field), "{field}: {err}");
        }
        let clash = |from: &str, to: &str| {
            let other = Registered::parse("other.yaml", &IRC.replace(from, to), server()).unwrap();
            let irc = Registered::parse("irc.yaml", IRC, server()).unwrap();
            Appservices::new(vec![irc, other]).unwrap_err()
        };
        assert!(clash("id: irc", "id: irc").contains("same id"));
        let shared_namespace = IRC
            .replace("id: irc", "id: other")
            .replace("as-irc", "as-2")
            .replace("hs-irc", "hs-2")
            .replace("ircbot", "otherbot");
        let other = Registered::parse("other.yaml", &shared_namespace, server()).unwrap();
        let irc = Registered::parse("irc.yaml", IRC, server()).unwrap();
        let err = Appservices::new(vec![irc, other]).unwrap_err();
        assert!(err.contains("exclusive namespaces.users"), "{err}");
    }
}
