//! Syncing.
//!
//! - `GET /_matrix/client/v3/sync` (initial and incremental, long-polling with `timeout`)
//!
//! Spec: client-server-api "Syncing" (`data/api/client-server/sync.yaml`).
//!
//! An initial sync's turn (`services::sync::InitialSyncs`) is held while its answer is
//! serialised and sent ([`answer`]), so the memory of big answers stays bounded however many
//! clients ask at once.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{
    HttpResponse,
    body::{BodySize, MessageBody},
};
use bytes::Bytes;
use ruma::api::client::sync::sync_events;

use crate::{
    Result,
    api::{extract::Ctx, respond},
    services::sync::{self, Answer, Params},
};

/// The pieces an answer is handed to the connection in: it buffers about one at a time, so an
/// answer is not copied whole into the connection's write buffer.
const CHUNK: usize = 64 * 1024;
/// Longest a turn stays with an answer being sent: a client that reads slowly keeps its own
/// answer in memory, but holds up the next initial sync no longer than this.
const SEND_HOLD: Duration = Duration::from_secs(10);

/// `GET /_matrix/client/v3/sync`
pub async fn sync_events(ctx: Ctx, req: sync_events::v3::Request) -> Result<Answer> {
    let session = ctx.session()?;
    let user_id = &session.user_id;
    let params = Params {
        device_id: session.device().ok().map(ToString::to_string),
        since: req.since,
        full_state: req.full_state,
        use_state_after: req.use_state_after,
        timeout: req.timeout,
        set_presence: req.set_presence,
        filter: req.filter,
    };
    sync::sync(&ctx.services, user_id, params).await
}

/// Serialises the answer; an initial sync's turn goes back once the connection has taken the
/// last byte (or the client went away, or [`SEND_HOLD`] passed).
pub fn answer(answer: Answer) -> HttpResponse {
    let Answer { response, turn } = answer;
    let http = respond::ruma_response(response);
    let Some(turn) = turn else {
        return http;
    };
    let turn = Arc::new(Mutex::new(Some(turn)));
    let timer = Arc::clone(&turn);
    actix_web::rt::spawn(async move {
        actix_web::rt::time::sleep(SEND_HOLD).await;
        give_back(&timer);
    });
    http.map_body(|_, body| match body.try_into_bytes() {
        Ok(bytes) => TurnBody {
            size: bytes.len() as u64,
            rest: bytes,
            turn,
        }
        .boxed(),
        // Not one buffer (never for a serialised answer): sent as it is, the turn goes back.
        Err(body) => {
            give_back(&turn);
            body
        }
    })
}

fn give_back(turn: &Mutex<Option<sync::Turn>>) {
    if let Ok(mut turn) = turn.lock() {
        turn.take();
    }
}

/// A serialised answer sent in [`CHUNK`]s, holding its turn until the end.
struct TurnBody {
    size: u64,
    rest: Bytes,
    turn: Arc<Mutex<Option<sync::Turn>>>,
}

impl MessageBody for TurnBody {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.size)
    }

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Bytes, Infallible>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            give_back(&this.turn);
            return Poll::Ready(None);
        }
        let chunk = this.rest.split_to(this.rest.len().min(CHUNK));
        if this.rest.is_empty() {
            // The last piece: the connection may not ask for the end before the client's next
            // request, so the buffer and the turn go now (`Bytes::new` lets go of the buffer).
            this.rest = Bytes::new();
            give_back(&this.turn);
        }
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl Drop for TurnBody {
    fn drop(&mut self) {
        give_back(&self.turn);
    }
}
