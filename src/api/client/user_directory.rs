//! `POST /_matrix/client/v3/user_directory/search`
//!
//! Spec: client-server-api "User directory" (`data/api/client-server/users.yaml`).

use ruma::api::client::user_directory::search_users::{self, v3::User};

use crate::{Result, api::extract::Ctx};

/// `POST /_matrix/client/v3/user_directory/search`
pub async fn search_users(ctx: Ctx, req: search_users::v3::Request) -> Result<search_users::v3::Response> {
    let limit = usize::try_from(u64::from(req.limit)).unwrap_or(usize::MAX);
    let (found, limited) = ctx
        .services
        .user_directory
        .search(ctx.user_id()?, &req.search_term, limit);
    let results = found
        .into_iter()
        .map(|f| {
            let mut user = User::new(f.user_id);
            user.display_name = f.display_name;
            user.avatar_url = f.avatar_url.map(Into::into);
            user
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}
