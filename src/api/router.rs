//! The one route shape: a ruma request type in, a ruma response type out.
//!
//! [`RouteTable::add`] takes a handler `async fn(Ctx, R) -> Result<R::OutgoingResponse>` and
//! registers it under every path ruma knows for `R`, with `R`'s method (`add_json`: the same
//! with a JSON answer, for the rare field ruma's response type leaves out). Everything that does not
//! depend on `R` (reading the body, authenticating, rate limiting, turning errors into responses)
//! is in non-generic functions, so each endpoint adds only a thin layer of generic code.

use std::{collections::BTreeMap, future::Future, sync::Arc};

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
/// Endpoints such as `/login` and `/register` take an optional application-service token.
/// Until application services exist no token is read there, so a stale user token sent along
/// (as Synapse also tolerates) does not turn a login into a 401.
impl AuthPolicy for auth_scheme::AppserviceTokenOptional {
    const REQUIREMENT: AuthRequirement = AuthRequirement::None;
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

    /// Adds every route to the app, each path with a 405 `M_UNRECOGNIZED` for other methods.
    /// Paths with fewer variables go first, so a literal segment wins over a `{variable}`.
    ///
    /// A trailing `{state_key}` also matches the empty string and its absence.
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
        for (path, routes) in resources {
            let resource = routes
                .iter()
                .fold(web::resource(path), |resource, make| resource.route(make()));
            cfg.service(resource.default_service(web::to(respond::method_not_allowed)));
        }
    }
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
