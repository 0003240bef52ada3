//! Push rules.
//!
//! - `GET /_matrix/client/v3/pushrules/`
//! - `GET /_matrix/client/v3/pushrules/global/`
//! - `GET|PUT|DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
//! - `GET|PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
//! - `GET|PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
//!
//! Spec: client-server-api "Push Rules: API" (`data/api/client-server/pushrules.yaml`). Each
//! user's rules are the server defaults with their changes merged in
//! (`services::push::rules`), stored as `m.push_rules` account data as Synapse shows them.

use ruma::api::client::push::{
    delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
    get_pushrules_global_scope, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
};

use crate::{Result, api::extract::Ctx};

/// `GET /_matrix/client/v3/pushrules/`
pub async fn get_pushrules_all(
    ctx: Ctx,
    _req: get_pushrules_all::v3::Request,
) -> Result<get_pushrules_all::v3::Response> {
    let rules = ctx.services.push_rules(ctx.user_id()?)?;
    Ok(get_pushrules_all::v3::Response::new((*rules).clone()))
}

/// `GET /_matrix/client/v3/pushrules/global/`
pub async fn get_pushrules_global_scope(
    ctx: Ctx,
    _req: get_pushrules_global_scope::v3::Request,
) -> Result<get_pushrules_global_scope::v3::Response> {
    let rules = ctx.services.push_rules(ctx.user_id()?)?;
    Ok(get_pushrules_global_scope::v3::Response::new((*rules).clone()))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn get_pushrule(ctx: Ctx, req: get_pushrule::v3::Request) -> Result<get_pushrule::v3::Response> {
    let rule = ctx.services.push_rule(ctx.user_id()?, req.kind, &req.rule_id)?;
    // ruma's `From<AnyPushRule>` has no arm for MSC4306's `postcontent` (it panics).
    let rule = match rule {
        ruma::push::AnyPushRule::PostContent(r) => r.into(),
        other => other.into(),
    };
    Ok(get_pushrule::v3::Response::new(rule))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn set_pushrule(ctx: Ctx, req: set_pushrule::v3::Request) -> Result<set_pushrule::v3::Response> {
    ctx.services
        .set_push_rule(ctx.user_id()?, req.rule, req.before.as_deref(), req.after.as_deref())
        .await?;
    Ok(set_pushrule::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn delete_pushrule(ctx: Ctx, req: delete_pushrule::v3::Request) -> Result<delete_pushrule::v3::Response> {
    ctx.services
        .delete_push_rule(ctx.user_id()?, req.kind, &req.rule_id)
        .await?;
    Ok(delete_pushrule::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn get_pushrule_enabled(
    ctx: Ctx,
    req: get_pushrule_enabled::v3::Request,
) -> Result<get_pushrule_enabled::v3::Response> {
    let rule = ctx.services.push_rule(ctx.user_id()?, req.kind, &req.rule_id)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.as_ref().enabled()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn set_pushrule_enabled(
    ctx: Ctx,
    req: set_pushrule_enabled::v3::Request,
) -> Result<set_pushrule_enabled::v3::Response> {
    ctx.services
        .set_push_rule_enabled(ctx.user_id()?, req.kind, &req.rule_id, req.enabled)
        .await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn get_pushrule_actions(
    ctx: Ctx,
    req: get_pushrule_actions::v3::Request,
) -> Result<get_pushrule_actions::v3::Response> {
    let rule = ctx.services.push_rule(ctx.user_id()?, req.kind, &req.rule_id)?;
    Ok(get_pushrule_actions::v3::Response::new(
        rule.as_ref().actions().to_vec(),
    ))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn set_pushrule_actions(
    ctx: Ctx,
    req: set_pushrule_actions::v3::Request,
) -> Result<set_pushrule_actions::v3::Response> {
    ctx.services
        .set_push_rule_actions(ctx.user_id()?, req.kind, &req.rule_id, req.actions)
        .await?;
    Ok(set_pushrule_actions::v3::Response::new())
}
