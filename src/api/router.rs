//! The one route shape: a ruma request type in, a ruma response type out.
//!
//! [`RouteTable::add`] takes a handler `async fn(Ctx, R) -> Result<R::OutgoingResponse>` and
//! registers it under every path ruma knows for `R`, with `R`'s method (`add_json`: the same
//! with a JSON answer, for the rare field ruma's response type leaves out). Everything that does not
//! depend on `R` (reading the body, authenticating, rate limiting, turning errors into responses)
//! is in non-generic functions, so each endpoint adds only a thin layer of generic code.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::Arc,
};

use actix_web::{HttpRequest, HttpResponse, web};
use ruma::api::{IncomingRequest, auth_scheme, path_builder::PathBuilder};

use super::{
    extract::{self, AuthRequirement, Ctx},
    respond,
};
use crate::{
    Error, Result,
    services::{Services, rate_limit::LimitClass},
};

/// What each ruma authentication scheme demands of a request.
pub trait AuthPolicy {
    /// The requirement.
    const REQUIREMENT: AuthRequirement;
}

impl AuthPolicy for auth_scheme::NoAuthentication {
    const REQUIREMENT: AuthRequirement = AuthRequirement::None;
}
impl AuthPolicy for auth_scheme::NoAccessToken {
    const REQUIREMENT: AuthRequirement = AuthRequirement::None;
}
impl AuthPolicy for auth_scheme::AccessToken {
    const REQUIREMENT: AuthRequirement = AuthRequirement::Required;
}
impl AuthPolicy for auth_scheme::AccessTokenOptional {
    const REQUIREMENT: AuthRequirement = AuthRequirement::Optional;
}
impl AuthPolicy for ruma::api::federation::authentication::ServerSignatures {
    const REQUIREMENT: AuthRequirement = AuthRequirement::Server;
}
/// Endpoints such as `/login` and `/register` take an optional application-service token.
/// Only an `as_token` is read there, so a stale user token sent along (as Synapse also
/// tolerates) does not turn a login into a 401.
impl AuthPolicy for auth_scheme::AppserviceTokenOptional {
    const REQUIREMENT: AuthRequirement = AuthRequirement::AppserviceOptional;
}

type Handler = Box<dyn Fn() -> actix_web::Route>;

/// Routes grouped by path, mounted as one actix resource per path.
#[derive(Default)]
pub struct RouteTable {
    paths: BTreeMap<&'static str, Vec<Handler>>,
}

impl RouteTable {
    /// Registers `handler` for every path of endpoint `R`.
    pub fn add<R, F, Fut>(&mut self, limit: LimitClass, handler: F)
    where
        R: IncomingRequest + 'static,
        R::Authentication: AuthPolicy,
        F: Fn(Ctx, R) -> Fut + Clone + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse>> + 'static,
    {
        self.add_answering(limit, handler, respond::ruma_response::<R::OutgoingResponse>);
    }

    /// [`Self::add`] for an endpoint whose answer ruma's response type cannot express (a field
    /// it leaves out that clients rely on): the handler answers JSON, still parsed from `R`.
    pub fn add_json<R, F, Fut>(&mut self, limit: LimitClass, handler: F)
    where
        R: IncomingRequest + 'static,
        R::Authentication: AuthPolicy,
        F: Fn(Ctx, R) -> Fut + Clone + 'static,
        Fut: Future<Output = Result<serde_json::Value>> + 'static,
    {
        self.add_answering(limit, handler, respond::json);
    }

    /// [`Self::add`] with the answer made by `answer`, for a handler whose output must live until
    /// the answer is serialised (it holds something, such as a turn of a bounded queue).
    pub fn add_answering<R, F, Fut, O>(&mut self, limit: LimitClass, handler: F, answer: fn(O) -> HttpResponse)
    where
        R: IncomingRequest + 'static,
        R::Authentication: AuthPolicy,
        F: Fn(Ctx, R) -> Fut + Clone + 'static,
        Fut: Future<Output = Result<O>> + 'static,
        O: 'static,
    {
        for path in R::PATH_BUILDER.all_paths() {
            let handler = handler.clone();
            let make = move || {
                let handler = handler.clone();
                let method =
                    actix_web::http::Method::from_bytes(R::METHOD.as_str().as_bytes()).expect("ruma methods are valid");
                web::method(method).to(
                    move |req: HttpRequest, payload: web::Payload, services: web::Data<Services>| {
                        serve::<R, F, Fut, O>(
                            req,
                            payload,
                            services.into_inner(),
                            (limit, path),
                            handler.clone(),
                            answer,
                        )
                    },
                )
            };
            self.paths.entry(path).or_default().push(Box::new(make));
        }
    }

    /// Registers a raw actix route (a handler that streams its body, or answers what is not
    /// Matrix JSON) under `path`, so that it takes part in the table's ordering and grouping.
    pub fn add_route(&mut self, path: &'static str, make: impl Fn() -> actix_web::Route + 'static) {
        self.paths.entry(path).or_default().push(Box::new(make));
    }

    /// Adds every route to the app, each path with a 405 `M_UNRECOGNIZED` for other methods.
    /// Paths with fewer variables go first, so a literal segment wins over a `{variable}`.
    ///
    /// A trailing `{state_key}` also matches the empty string and its absence.
    ///
    /// actix tries resources one by one, matching each `{variable}` path with a regular
    /// expression, so a send (three variables) would be tried against nearly every path first.
    /// Paths whose first four segments are literal and that go on after them are therefore
    /// grouped in one scope per such prefix ([`scope_prefix`]): a scope is a plain prefix
    /// comparison, and only the paths inside the one that matches are tried. Two paths in
    /// different groups, or a grouped one and one left outside, never match the same request
    /// (they differ in a literal segment or in their number of segments), so the grouping
    /// changes no answer. A request that matches a scope's prefix and none of its paths gets
    /// the app's default answer (404 `M_UNRECOGNIZED`), as before.
    pub fn mount(self, cfg: &mut web::ServiceConfig) {
        let mut resources: Vec<(String, &[Handler])> = Vec::new();
        for (path, routes) in &self.paths {
            match path.strip_suffix("/{state_key}") {
                Some(prefix) => {
                    resources.push((format!("{prefix}/{{state_key:[^/]*}}"), routes));
                    // Without the segment: `extract::path_args` reads the missing key as "".
                    resources.push((prefix.to_owned(), routes));
                }
                None => resources.push(((*path).to_owned(), routes)),
            }
        }
        resources.sort_by_key(|(path, _)| path.matches('{').count());
        let resource = |path: &str, routes: &[Handler]| {
            routes
                .iter()
                .fold(web::resource(path), |resource, make| resource.route(make()))
                .default_service(web::to(respond::method_not_allowed))
        };
        let mut groups: BTreeMap<String, Vec<(String, &[Handler])>> = BTreeMap::new();
        for (path, routes) in resources {
            match scope_prefix(&path) {
                Some(prefix) => groups
                    .entry(prefix.to_owned())
                    .or_default()
                    .push((path[prefix.len()..].to_owned(), routes)),
                None => {
                    cfg.service(resource(&path, routes));
                }
            }
        }
        for (prefix, paths) in groups {
            // Inside a group, the paths that start with one same `{variable}` segment and go
            // on (`/{room_id}/send/…`) form a nested scope: it matches that segment once, and
            // each of its paths then starts with a literal, which the regex engine rejects
            // at its first byte. The group's other paths go first, so a literal segment still
            // wins over the variable.
            let heads: BTreeSet<&str> = paths.iter().filter_map(|(path, _)| variable_head(path)).collect();
            let nested = match heads.len() {
                1 => heads.into_iter().next(),
                _ => None,
            };
            let (inner, outer): (Vec<_>, Vec<_>) = paths
                .iter()
                .partition(|(path, _)| nested.is_some() && variable_head(path) == nested);
            let mut scope = outer.iter().fold(web::scope(&prefix), |scope, (path, routes)| {
                scope.service(resource(path, routes))
            });
            if let Some(head) = nested {
                scope = scope.service(inner.iter().fold(web::scope(head), |scope, (path, routes)| {
                    scope.service(resource(&path[head.len()..], routes))
                }));
            }
            cfg.service(scope);
        }
    }
}

/// The first segment of a path inside a group when it is a `{variable}` and more segments
/// follow (`/{room_id}` for `/{room_id}/send/{event_type}/{txn_id}`).
fn variable_head(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let segment = rest.split('/').next()?;
    (segment.starts_with('{') && rest.len() > segment.len() + 1).then(|| &path[..1 + segment.len()])
}

/// The scope a path is grouped in: its first four segments, when they are all literal and the
/// path goes on after them (`/_matrix/client/v3/rooms` for `/_matrix/client/v3/rooms/{room_id}/send/…`).
fn scope_prefix(path: &str) -> Option<&str> {
    let mut end = 0;
    for _ in 0..4 {
        let rest = path.get(end..)?.strip_prefix('/')?;
        let segment = rest.split('/').next()?;
        if segment.is_empty() || segment.contains('{') {
            return None;
        }
        end += 1 + segment.len();
    }
    (path.len() > end + 1 && path[end..].starts_with('/')).then(|| &path[..end])
}

async fn serve<R, F, Fut, O>(
    req: HttpRequest,
    payload: web::Payload,
    services: Arc<Services>,
    (limit, template): (LimitClass, &'static str),
    handler: F,
    answer: fn(O) -> HttpResponse,
) -> HttpResponse
where
    R: IncomingRequest,
    R::Authentication: AuthPolicy,
    F: Fn(Ctx, R) -> Fut,
    Fut: Future<Output = Result<O>>,
{
    let outcome = async {
        let prepared = extract::prepare(
            &req,
            payload,
            &services,
            <R::Authentication as AuthPolicy>::REQUIREMENT,
            limit.applies(R::RATE_LIMITED).then_some(limit),
            template,
        )
        .await?;
        let request = extract::parse::<R>(&prepared)?;
        handler(prepared.ctx, request).await
    }
    .await;
    match outcome {
        Ok(response) => answer(response),
        Err(error) => respond::error(error),
    }
}

/// Helper for handlers: the error when a required field of the spec is missing.
pub fn require<T>(value: Option<T>, what: &str) -> Result<T> {
    value.ok_or_else(|| Error::missing_param(format!("Missing {what}")))
}

#[cfg(test)]
mod tests {
    use super::{scope_prefix, variable_head};

    #[test]
    fn a_leading_variable_segment_heads_a_nested_scope_only_when_more_follows() {
        assert_eq!(
            variable_head("/{room_id}/send/{event_type}/{txn_id}"),
            Some("/{room_id}")
        );
        assert_eq!(variable_head("/{user_id}/filter"), Some("/{user_id}"));
        assert_eq!(variable_head("/{room_id}"), None);
        assert_eq!(variable_head("/{room_id}/"), None);
        assert_eq!(variable_head("/joined/{x}"), None);
    }

    #[test]
    fn paths_are_grouped_by_four_literal_segments() {
        assert_eq!(
            scope_prefix("/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}"),
            Some("/_matrix/client/v3/rooms")
        );
        assert_eq!(
            scope_prefix("/_matrix/client/v3/user/{user_id}/filter"),
            Some("/_matrix/client/v3/user")
        );
        // Four segments or fewer, or a variable among the first four: not grouped.
        assert_eq!(scope_prefix("/_matrix/client/v3/sync"), None);
        assert_eq!(scope_prefix("/_matrix/client/versions"), None);
        assert_eq!(scope_prefix("/_matrix/client/v3/"), None);
        assert_eq!(scope_prefix("/_matrix/client/{version}/rooms/x"), None);
    }
}
