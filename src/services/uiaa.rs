//! User-interactive authentication (UIA): the multi-stage handshake that guards registration,
//! password changes, deactivation and device deletion.
//!
//! Sessions live in memory for up to an hour, at most [`MAX_SESSIONS`] of them (the expired and
//! then the least recently used go first); a restart only makes a client start its UIA over.
//! Supported stages: `m.login.dummy`, `m.login.password` (for the user making the request) and
//! `m.login.registration_token`.

use std::time::{Duration, Instant};

use ruma::{
    OwnedUserId, UserId,
    api::{
        client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
        error::{ErrorKind, StandardErrorBody},
    },
};

use super::{Services, accounts::LoginCheck};
use crate::{
    Error, Result, util,
    util::bounded::{BoundedMap, Evict},
};

const SESSION_LIFETIME: Duration = Duration::from_secs(3600);

/// Most UIA sessions held at once.
pub const MAX_SESSIONS: usize = 10_000;

struct UiaaSession {
    completed: Vec<AuthType>,
    user_id: Option<OwnedUserId>,
    registration_token: Option<String>,
    created: Instant,
}

impl UiaaSession {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.created) >= SESSION_LIFETIME
    }
}

impl Evict for UiaaSession {
    fn stale(&self, now: Instant) -> bool {
        self.expired(now)
    }
}

/// What a completed UIA yielded.
#[derive(Debug, Default)]
pub struct Completed {
    /// The registration token the client proved, to be used up by the registration.
    pub registration_token: Option<String>,
}

/// The UIA service.
pub struct Uiaa {
    sessions: BoundedMap<String, UiaaSession>,
}

impl Default for Uiaa {
    fn default() -> Self {
        Self::new()
    }
}

impl Uiaa {
    /// No sessions yet.
    pub fn new() -> Self {
        Self {
            sessions: BoundedMap::new(MAX_SESSIONS),
        }
    }

    /// Runs one round of UIA for a request guarded by `flows`. `user` is the authenticated user
    /// (stages must prove that user), `None` during registration.
    ///
    /// Returns `Ok` once a flow is complete; otherwise `Err(Error::Uiaa)` carrying the session,
    /// the completed stages and, after a failed stage, the reason.
    pub async fn authenticate(
        &self,
        services: &Services,
        flows: Vec<AuthFlow>,
        auth: Option<&AuthData>,
        user: Option<&UserId>,
    ) -> Result<Completed> {
        let session_id = match auth.and_then(AuthData::session) {
            Some(id) => {
                let owner = self.sessions.with(id, |session| {
                    session
                        .filter(|s| !s.expired(Instant::now()))
                        .map(|s| s.user_id.clone())
                });
                match owner {
                    Some(owner) if owner.as_deref() != user => {
                        return Err(Error::forbidden("This UIA session belongs to another user"));
                    }
                    Some(_) => id.to_owned(),
                    None => {
                        return Err(Error::new(
                            http::StatusCode::BAD_REQUEST,
                            ErrorKind::Unknown,
                            format!("Unknown session ID: {id}"),
                        ));
                    }
                }
            }
            None => self.start(user),
        };
        let Some(auth) = auth.filter(|a| a.auth_type().is_some()) else {
            return Err(self.progress(&session_id, flows, None));
        };
        let auth_type = auth.auth_type().unwrap_or(AuthType::Dummy);
        if !flows.iter().any(|f| f.stages.contains(&auth_type)) {
            let err = StandardErrorBody::new(
                ErrorKind::Unrecognized,
                format!("Authentication stage {auth_type} is not offered here"),
            );
            return Err(self.progress(&session_id, flows, Some(err)));
        }
        let mut proved_token = None;
        let failure = match auth {
            AuthData::Dummy(_) => None,
            AuthData::Password(p) => match self.check_password(services, &p.identifier, &p.password, user).await? {
                true => None,
                false => Some(StandardErrorBody::new(
                    ErrorKind::Forbidden,
                    "Invalid username or password".into(),
                )),
            },
            AuthData::RegistrationToken(t) => match services.registration.token_is_usable(&t.token)? {
                true => {
                    proved_token = Some(t.token.clone());
                    None
                }
                false => Some(StandardErrorBody::new(
                    ErrorKind::Unauthorized,
                    "Invalid registration token".into(),
                )),
            },
            _ => Some(StandardErrorBody::new(
                ErrorKind::Unrecognized,
                format!("Authentication stage {auth_type} is not supported"),
            )),
        };
        if let Some(err) = failure {
            return Err(self.progress(&session_id, flows, Some(err)));
        }
        let complete = self.sessions.with(session_id.as_str(), |session| {
            let session = session.filter(|s| !s.expired(Instant::now()))?;
            if !session.completed.contains(&auth_type) {
                session.completed.push(auth_type);
            }
            if proved_token.is_some() {
                session.registration_token = proved_token;
            }
            Some(
                flows
                    .iter()
                    .any(|f| f.stages.iter().all(|s| session.completed.contains(s))),
            )
        });
        match complete {
            None => Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::Unknown,
                "UIA session expired",
            )),
            Some(true) => Ok(Completed {
                registration_token: self
                    .sessions
                    .remove(session_id.as_str())
                    .and_then(|s| s.registration_token),
            }),
            Some(false) => Err(self.progress(&session_id, flows, None)),
        }
    }

    async fn check_password(
        &self,
        services: &Services,
        identifier: &UserIdentifier,
        password: &str,
        user: Option<&UserId>,
    ) -> Result<bool> {
        let UserIdentifier::Matrix(id) = identifier else {
            return Ok(false);
        };
        // Every outcome costs one verification, so the time taken tells nothing.
        Ok(match services.accounts.check_login(&id.user, password).await? {
            LoginCheck::Valid(claimed) => user.is_none_or(|u| u == claimed),
            LoginCheck::Deactivated | LoginCheck::Invalid => false,
        })
    }

    fn start(&self, user: Option<&UserId>) -> String {
        let id = util::random_string(24);
        self.sessions.insert(
            id.clone(),
            UiaaSession {
                completed: Vec::new(),
                user_id: user.map(ToOwned::to_owned),
                registration_token: None,
                created: Instant::now(),
            },
        );
        id
    }

    fn progress(&self, session_id: &str, flows: Vec<AuthFlow>, auth_error: Option<StandardErrorBody>) -> Error {
        let mut info = UiaaInfo::new(flows);
        info.session = Some(session_id.to_owned());
        info.completed = self
            .sessions
            .with(session_id, |s| s.map(|s| s.completed.clone()))
            .unwrap_or_default();
        info.params = serde_json::value::to_raw_value(&serde_json::json!({})).ok();
        info.auth_error = auth_error.map(Box::new);
        Error::Uiaa(Box::new(info))
    }
}

/// A single-stage flow.
pub fn flow(stage: AuthType) -> AuthFlow {
    AuthFlow::new(vec![stage])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uia_sessions_stay_bounded() {
        let uiaa = Uiaa::new();
        let first = uiaa.start(None);
        for _ in 0..MAX_SESSIONS * 2 {
            uiaa.start(None);
        }
        assert!(
            uiaa.sessions.len() <= MAX_SESSIONS,
            "{} sessions held",
            uiaa.sessions.len()
        );
        assert!(
            uiaa.sessions.with(first.as_str(), |s| s.is_none()),
            "the oldest session made room"
        );
    }
}
