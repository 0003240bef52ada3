//! Simplified sliding sync.
//!
//! - `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (MSC4186 as Element X
//!   sends it: `pos`, `timeout` and `set_presence` in the query; extensions of MSC3884, 3885,
//!   3959, 3960, 3961 and 4308; the list filters `spaces`, `tags` and `not_tags`, which ruma's
//!   `v5` type drops, read from the body as well)
//! - `POST /_matrix/client/v4/sync` (MSC4186 as accepted, on the same engine)
//!
//! Spec: not in the spec yet; `shared/msc/4186-simplified-sliding-sync.synapse-experimental.md`
//! (the unstable form) and `shared/msc/4186-simplified-sliding-sync.md` (the accepted one).

use ruma::api::client::sync::sync_events::v5;

use crate::{Result, api::extract::Ctx, services::sync::sliding};

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`
pub async fn sliding_sync(ctx: Ctx, req: unstable::Request) -> Result<v5::Response> {
    let session = ctx.session()?;
    let answer = sliding::sliding_sync(
        &ctx.services,
        (&session.user_id, session.device_id.as_str()),
        req.into_request(),
    )
    .await?;
    Ok(answer.into())
}

/// The unstable endpoint's request: ruma's `v5` type, plus the list filters it drops
/// (`spaces`, `tags`, `not_tags`, which Element X and others send), read from the same body.
pub mod unstable {
    use std::collections::BTreeMap;

    use ruma::{
        OwnedRoomId,
        api::{IncomingRequest, Metadata, client::sync::sync_events::v5, error::DeserializationError},
    };
    use serde::Deserialize;

    use crate::services::sync::sliding::model::SlidingRequest;

    /// ruma's request and the filters it has no fields for, per list.
    #[derive(Clone, Debug)]
    pub struct Request {
        /// What ruma parsed.
        pub inner: v5::Request,
        /// List name → the filters ruma drops.
        pub filters: BTreeMap<String, Filters>,
    }

    /// The filters ruma's `v5` request type drops.
    #[derive(Clone, Debug, Default, Deserialize)]
    pub struct Filters {
        /// Only rooms that are children of these spaces.
        #[serde(default)]
        pub spaces: Option<Vec<OwnedRoomId>>,
        /// Only rooms with one of these tags.
        #[serde(default)]
        pub tags: Option<Vec<String>>,
        /// No room with one of these tags.
        #[serde(default)]
        pub not_tags: Option<Vec<String>>,
    }

    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        lists: BTreeMap<String, List>,
    }

    #[derive(Deserialize)]
    struct List {
        #[serde(default)]
        filters: Option<Filters>,
    }

    impl Metadata for Request {
        const METHOD: http::Method = v5::Request::METHOD;
        const RATE_LIMITED: bool = v5::Request::RATE_LIMITED;
        type Authentication = <v5::Request as Metadata>::Authentication;
        type PathBuilder = <v5::Request as Metadata>::PathBuilder;
        const PATH_BUILDER: Self::PathBuilder = v5::Request::PATH_BUILDER;
    }

    impl IncomingRequest for Request {
        type EndpointError = <v5::Request as IncomingRequest>::EndpointError;
        type OutgoingResponse = v5::Response;

        fn try_from_http_request_inner(
            request: http::Request<&[u8]>,
            path_args: &[&str],
        ) -> Result<Self, DeserializationError> {
            let bytes: &[u8] = request.body();
            let filters = if bytes.is_empty() {
                BTreeMap::new()
            } else {
                serde_json::from_slice::<Body>(bytes)?
                    .lists
                    .into_iter()
                    .filter_map(|(name, list)| Some((name, list.filters?)))
                    .collect()
            };
            let inner = v5::Request::try_from_http_request_inner(request, path_args)?;
            Ok(Request { inner, filters })
        }
    }

    impl Request {
        /// The engine's request, with the filters ruma dropped put back.
        pub fn into_request(self) -> SlidingRequest {
            let mut request = SlidingRequest::from(self.inner);
            for (name, filters) in self.filters {
                if let Some(list) = request.lists.get_mut(&name) {
                    list.filters.spaces = filters.spaces;
                    list.filters.tags = filters.tags;
                    list.filters.not_tags = filters.not_tags.unwrap_or_default();
                }
            }
            request
        }
    }
}

/// `POST /_matrix/client/v4/sync`: the same engine in the accepted form of MSC4186 (body-only
/// parameters, `range`, `required_state` as `include`/`exclude`/`lazy_members`, `is_invited`,
/// `stripped_state`, rooms with `membership` and `lists`, no unread counts; bare typing and
/// receipt contents in the extensions, as MSC4508 and MSC4551 define them).
pub async fn sliding_sync_v4(ctx: Ctx, req: v4::Request) -> Result<serde_json::Value> {
    let session = ctx.session()?;
    let request = req.body.into_request()?;
    let answer = sliding::sliding_sync(&ctx.services, (&session.user_id, session.device_id.as_str()), request).await?;
    v4::answer(answer)
}

/// The accepted form's request (ruma has no types for it yet) and its answer.
pub mod v4 {
    use std::{collections::BTreeMap, time::Duration};

    use http::Method;
    use ruma::{
        OwnedRoomId,
        api::{
            IncomingRequest, Metadata, auth_scheme::AccessToken, client::sync::sync_events::v5,
            error::DeserializationError, path_builder::SinglePath,
        },
        presence::PresenceState,
    };
    use serde::{Deserialize, Serialize};
    use serde_json::{Value, json};

    use crate::{
        Error, Result,
        services::sync::sliding::model::{ListConfig, ListFilter, RoomRule, SlidingRequest, SlidingResponse},
    };

    /// The request: everything is in the body. (ruma has no type for this endpoint yet, so the
    /// metadata and the parsing ruma's macros would write are written here.)
    #[derive(Clone, Debug)]
    pub struct Request {
        /// The body.
        pub body: Body,
    }

    impl Metadata for Request {
        const METHOD: Method = Method::POST;
        const RATE_LIMITED: bool = false;
        type Authentication = AccessToken;
        type PathBuilder = SinglePath;
        const PATH_BUILDER: SinglePath = SinglePath::new("/_matrix/client/v4/sync");
    }

    impl IncomingRequest for Request {
        type EndpointError = ruma::api::error::Error;
        // Unused: the handler answers JSON (`RouteTable::add_json`).
        type OutgoingResponse = v5::Response;

        fn try_from_http_request_inner(
            request: http::Request<&[u8]>,
            _path_args: &[&str],
        ) -> Result<Self, DeserializationError> {
            let bytes = request.body();
            let body = if bytes.is_empty() {
                Body::default()
            } else {
                serde_json::from_slice(bytes)?
            };
            Ok(Request { body })
        }
    }

    /// The request body.
    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    pub struct Body {
        /// The connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub conn_id: Option<String>,
        /// The previous answer's position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pos: Option<String>,
        /// Milliseconds to wait for news.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timeout: Option<u64>,
        /// `online`, `unavailable` or `offline`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub set_presence: Option<String>,
        /// The lists.
        #[serde(default)]
        pub lists: BTreeMap<String, List>,
        /// The room subscriptions.
        #[serde(default)]
        pub room_subscriptions: BTreeMap<OwnedRoomId, Subscription>,
        /// The extensions.
        #[serde(default)]
        pub extensions: v5::request::Extensions,
        /// Echoed back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub txn_id: Option<String>,
    }

    /// A list.
    #[derive(Clone, Debug, Deserialize, Serialize)]
    pub struct List {
        /// Most timeline events per room.
        pub timeline_limit: u64,
        /// The state to send.
        pub required_state: RequiredState,
        /// The inclusive window.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub range: Option<(u64, u64)>,
        /// The filters.
        #[serde(default)]
        pub filters: Filters,
    }

    /// A room subscription.
    #[derive(Clone, Debug, Deserialize, Serialize)]
    pub struct Subscription {
        /// Most timeline events.
        pub timeline_limit: u64,
        /// The state to send.
        pub required_state: RequiredState,
    }

    /// `required_state`.
    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    pub struct RequiredState {
        /// What to send.
        #[serde(default)]
        pub include: Vec<Element>,
        /// What to leave out of it.
        #[serde(default)]
        pub exclude: Vec<Element>,
        /// Lazy-loaded members.
        #[serde(default)]
        pub lazy_members: bool,
    }

    /// A `(type, state_key)` pattern; an absent field matches anything.
    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    pub struct Element {
        /// The event type.
        #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
        pub kind: Option<String>,
        /// The state key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub state_key: Option<String>,
    }

    /// The list filters.
    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    pub struct Filters {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_dm: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_encrypted: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_invited: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_types: Option<Vec<Option<String>>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_room_types: Option<Vec<Option<String>>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spaces: Option<Vec<OwnedRoomId>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tags: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_tags: Option<Vec<String>>,
    }

    fn patterns(elements: &[Element]) -> Vec<(String, String)> {
        elements
            .iter()
            .map(|e| {
                (
                    e.kind.clone().unwrap_or_else(|| "*".into()),
                    e.state_key.clone().unwrap_or_else(|| "*".into()),
                )
            })
            .collect()
    }

    fn rule(timeline_limit: u64, state: &RequiredState) -> RoomRule {
        let mut include = patterns(&state.include);
        if state.lazy_members {
            include.push(("m.room.member".into(), "$LAZY".into()));
        }
        RoomRule {
            timeline_limit,
            include,
            exclude: patterns(&state.exclude),
        }
    }

    impl Body {
        /// The engine's request; an unknown `set_presence` or a `to_device.limit` of 0 is 400.
        pub fn into_request(self) -> Result<SlidingRequest> {
            let set_presence = match self.set_presence.as_deref() {
                None | Some("online") => PresenceState::Online,
                Some("unavailable") => PresenceState::Unavailable,
                Some("offline") => PresenceState::Offline,
                Some(_) => {
                    return Err(Error::invalid_param(
                        "set_presence must be online, unavailable or offline",
                    ));
                }
            };
            if self.extensions.to_device.limit.is_some_and(|l| l == ruma::UInt::MIN) {
                return Err(Error::invalid_param("extensions.to_device.limit must be positive"));
            }
            let lists = self
                .lists
                .into_iter()
                .map(|(name, list)| {
                    let f = list.filters;
                    let config = ListConfig {
                        ranges: list.range.into_iter().collect(),
                        rule: rule(list.timeline_limit, &list.required_state),
                        filters: ListFilter {
                            is_dm: f.is_dm,
                            is_encrypted: f.is_encrypted,
                            is_invite: f.is_invited,
                            room_types: f.room_types,
                            not_room_types: f.not_room_types.unwrap_or_default(),
                            spaces: f.spaces,
                            tags: f.tags,
                            not_tags: f.not_tags.unwrap_or_default(),
                        },
                    };
                    (name, config)
                })
                .collect();
            let subscriptions = self
                .room_subscriptions
                .into_iter()
                .map(|(room, s)| (room, rule(s.timeline_limit, &s.required_state)))
                .collect();
            Ok(SlidingRequest {
                conn_id: self.conn_id.unwrap_or_default(),
                pos: self.pos,
                timeout: self.timeout.map(Duration::from_millis),
                set_presence,
                lists,
                subscriptions,
                extensions: self.extensions,
                txn_id: self.txn_id,
            })
        }
    }

    fn to_value<T: Serialize>(value: &T) -> Result<Value> {
        serde_json::to_value(value).map_err(|e| Error::internal(e.to_string()))
    }

    /// The answer in the accepted form.
    pub fn answer(answer: SlidingResponse) -> Result<Value> {
        let lists: serde_json::Map<String, Value> = answer
            .lists
            .iter()
            .map(|(name, count)| (name.clone(), json!({"count": count})))
            .collect();
        let mut rooms = serde_json::Map::new();
        for (room_id, out) in answer.rooms {
            let mut room = to_value(&out.room)?;
            if let Some(object) = room.as_object_mut() {
                object.remove("notification_count");
                object.remove("highlight_count");
                if let Some(stripped) = object.remove("invite_state") {
                    object.insert("stripped_state".into(), stripped);
                }
                object.insert("membership".into(), out.membership.into());
                if !out.lists.is_empty() {
                    object.insert("lists".into(), out.lists.into());
                }
                if out.name_removed {
                    object.insert("name".into(), Value::Null);
                }
                // Heroes are for rooms without a name.
                if object.get("name").is_some_and(Value::is_string) {
                    object.remove("heroes");
                }
                if out.expanded_timeline {
                    object.insert("expanded_timeline".into(), true.into());
                }
            }
            rooms.insert(room_id.to_string(), room);
        }
        let mut extensions = to_value(&answer.extensions)?;
        // Typing and receipts carry the bare content per room.
        for key in ["typing", "receipts"] {
            if let Some(per_room) = extensions
                .get_mut(key)
                .and_then(|e| e.get_mut("rooms"))
                .and_then(Value::as_object_mut)
            {
                for value in per_room.values_mut() {
                    *value = value["content"].take();
                }
            }
        }
        let mut body = json!({"pos": answer.pos, "lists": lists, "rooms": rooms, "extensions": extensions});
        if let Some(txn_id) = answer.txn_id {
            body["txn_id"] = txn_id.into();
        }
        Ok(body)
    }
}
