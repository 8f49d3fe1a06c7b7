//! `/api/v1/webhooks`: worker pools' subscriptions (service tokens only). The signing secret is generated
//! here, shown once (on creation and on rotation), and never again.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use actors::enums::{Priority, TaskType};
use actors::webhooks::{Delivery, Subscription, EVENT_TYPES};
use actors::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::errors::{ApiError, ErrorBody};
// Bodies are parsed like the ticket endpoints' (422 `{"detail": …}` naming the field), not by actix's `Json`
// extractor, whose errors are a plain-text 400.
use super::tickets::parse_body;
use crate::webhooks::address::AddressPolicy;
use crate::webhooks::sign::new_secret;

/// What the webhook endpoints need besides the router.
#[derive(Clone)]
pub struct WebhookApi {
    pub policy: AddressPolicy,
    /// How long the old secret keeps signing after a rotation.
    pub secret_overlap: Duration,
}

/// A new subscription.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewSubscription {
    pub url: String,
    /// Event types (at least one): see GET /api/v1/webhooks/event-types.
    pub events: Vec<String>,
    #[serde(default)]
    pub task_types: Vec<TaskType>,
    /// The pool's capabilities: a ticket matches when its required capabilities are a subset.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    #[serde(default)]
    pub min_priority: Option<Priority>,
    #[serde(default)]
    pub plan_id: Option<String>,
}

/// A change to a subscription; absent fields stay as they are. `paused: false` also re-enables a
/// subscription the service disabled.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SubscriptionPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub task_types: Option<Vec<TaskType>>,
    pub capabilities: Option<Option<Vec<String>>>,
    pub min_priority: Option<Option<Priority>>,
    pub plan_id: Option<Option<String>>,
    pub paused: Option<bool>,
}

/// A subscription with its secret: the answer to a creation or a rotation, the only time it is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionWithSecret {
    #[serde(flatten)]
    pub subscription: Subscription,
    pub secret: String,
}

/// A page of deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    pub total: i64,
    pub offset: i64,
    pub limit: i64,
}

fn check_events(events: &[String]) -> Result<(), ApiError> {
    if events.is_empty() {
        return Err(ApiError::Unprocessable("events: at least one event type".into()));
    }
    match events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
        Some(bad) => Err(ApiError::Unprocessable(format!(
            "events: unknown event type {bad:?}; known: {}",
            EVENT_TYPES.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Longest accepted subscription URL, in bytes.
const MAX_URL_LEN: usize = 2_048;

/// What a subscription stores is storable (no NUL: PostgreSQL's `jsonb` refuses it) and bounded, like a ticket.
fn check_storable(s: &Subscription) -> Result<(), ApiError> {
    use actors::validation::{storable, text, MAX_ID_LEN, MAX_LIST_LEN};
    let invalid = |e: actors::validation::ValidationError| ApiError::Unprocessable(e.to_string());
    text(&s.url, "url", MAX_URL_LEN).map_err(invalid)?;
    if let Some(plan) = &s.plan_id {
        text(plan, "plan_id", MAX_ID_LEN).map_err(invalid)?;
    }
    let capabilities = s.capabilities.as_deref().unwrap_or_default();
    if capabilities.len() > MAX_LIST_LEN {
        return Err(ApiError::Unprocessable(format!("capabilities: more than {MAX_LIST_LEN} entries")));
    }
    for (i, c) in capabilities.iter().enumerate() {
        text(c, &format!("capabilities[{i}]"), MAX_ID_LEN).map_err(invalid)?;
    }
    for e in &s.events {
        storable(e, "events").map_err(invalid)?;
    }
    Ok(())
}

async fn check_url(api: &WebhookApi, url: &str) -> Result<(), ApiError> {
    api.policy.check(url).await.map_err(|e| ApiError::Unprocessable(format!("url: {e}")))
}

async fn reload(router: &Router) -> Result<(), ApiError> {
    Ok(router.webhooks().reload(&*router.store()).await?)
}

fn find(router: &Router, id: &str) -> Result<Subscription, ApiError> {
    router.webhooks().get(id).ok_or_else(|| ApiError::NotFound(format!("webhook subscription {id} not found")))
}

/// Subscribe a worker pool.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = NewSubscription, responses(
    (status = 201, description = "Subscribed; the secret is shown this once", body = SubscriptionWithSecret),
    (status = 422, description = "Invalid URL, address or event type", body = ErrorBody),
))]
pub async fn create(
    router: web::Data<Router>,
    api: web::Data<WebhookApi>,
    Caller(caller): Caller,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let new: NewSubscription = parse_body(&body)?;
    check_events(&new.events)?;
    check_url(&api, &new.url).await?;
    let now = router.now_ms();
    let secret = new_secret();
    let subscription = Subscription {
        id: format!("wh_{}", uuid::Uuid::new_v4().simple()),
        url: new.url,
        events: new.events,
        task_types: new.task_types,
        capabilities: new.capabilities,
        min_priority: new.min_priority,
        plan_id: new.plan_id.filter(|p| !p.is_empty()),
        secret: secret.clone(),
        previous_secret: None,
        previous_secret_until: None,
        paused: false,
        disabled_reason: None,
        consecutive_failures: 0,
        failing_since: None,
        created_at: now,
        updated_at: now,
    };
    check_storable(&subscription)?;
    router.store().webhook_put(&subscription).await?;
    reload(&router).await?;
    tracing::info!(subscription = %subscription.id, url = %subscription.url, actor = caller.subject(), "webhook subscription created");
    Ok(HttpResponse::Created().json(SubscriptionWithSecret { subscription: subscription.redacted(), secret }))
}

/// Every subscription (without secrets).
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", responses(
    (status = 200, description = "The subscriptions", body = [Subscription]),
))]
pub async fn list(router: web::Data<Router>, Caller(caller): Caller) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    reload(&router).await?;
    let all: Vec<Subscription> = router.webhooks().snapshot().iter().map(Subscription::redacted).collect();
    Ok(HttpResponse::Ok().json(all))
}

/// One subscription (without its secret).
#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)), responses(
    (status = 200, description = "The subscription", body = Subscription),
    (status = 404, description = "No such subscription", body = ErrorBody),
))]
pub async fn get(
    router: web::Data<Router>,
    Caller(caller): Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    Ok(HttpResponse::Ok().json(find(&router, &path)?.redacted()))
}

/// Change, pause or resume a subscription.
#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    request_body = SubscriptionPatch, responses(
    (status = 200, description = "The subscription", body = Subscription),
    (status = 404, description = "No such subscription", body = ErrorBody),
    (status = 422, description = "Invalid change", body = ErrorBody),
))]
pub async fn patch(
    router: web::Data<Router>,
    api: web::Data<WebhookApi>,
    Caller(caller): Caller,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let p: SubscriptionPatch = parse_body(&body)?;
    let mut s = find(&router, &path)?;
    if let Some(url) = p.url {
        check_url(&api, &url).await?;
        s.url = url;
    }
    if let Some(events) = p.events {
        check_events(&events)?;
        s.events = events;
    }
    if let Some(v) = p.task_types {
        s.task_types = v;
    }
    if let Some(v) = p.capabilities {
        s.capabilities = v;
    }
    if let Some(v) = p.min_priority {
        s.min_priority = v;
    }
    if let Some(v) = p.plan_id {
        s.plan_id = v;
    }
    if let Some(paused) = p.paused {
        s.paused = paused;
        if !paused {
            // Resuming also lifts a disable by the service and starts its failure count afresh.
            s.disabled_reason = None;
            s.consecutive_failures = 0;
            s.failing_since = None;
        }
    }
    s.updated_at = router.now_ms();
    check_storable(&s)?;
    router.store().webhook_put(&s).await?;
    reload(&router).await?;
    Ok(HttpResponse::Ok().json(s.redacted()))
}

/// Unsubscribe (pending deliveries are dropped).
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such subscription", body = ErrorBody),
))]
pub async fn delete(
    router: web::Data<Router>,
    Caller(caller): Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    if !router.store().webhook_delete(&path).await? {
        return Err(ApiError::NotFound(format!("webhook subscription {path} not found")));
    }
    reload(&router).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A new signing secret; the old one keeps signing (beside it) for WEBHOOK_SECRET_OVERLAP_SECONDS.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path)), responses(
    (status = 200, description = "The new secret, shown this once", body = SubscriptionWithSecret),
    (status = 404, description = "No such subscription", body = ErrorBody),
))]
pub async fn rotate(
    router: web::Data<Router>,
    api: web::Data<WebhookApi>,
    Caller(caller): Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let mut s = find(&router, &path)?;
    let now = router.now_ms();
    let secret = new_secret();
    s.previous_secret = Some(std::mem::replace(&mut s.secret, secret.clone()));
    s.previous_secret_until = Some(now + api.secret_overlap.as_millis() as i64);
    s.updated_at = now;
    router.store().webhook_put(&s).await?;
    reload(&router).await?;
    Ok(HttpResponse::Ok().json(SubscriptionWithSecret { subscription: s.redacted(), secret }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// ≥ 0, default 0.
    #[param(value_type = Option<i64>)]
    pub offset: Option<String>,
    /// 1–1000, default 100.
    #[param(value_type = Option<i64>)]
    pub limit: Option<String>,
}

/// A subscription's deliveries, newest first: status, attempts, last error, next try.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), PageParams), responses(
    (status = 200, description = "A page of deliveries", body = DeliveryPage),
    (status = 404, description = "No such subscription", body = ErrorBody),
))]
pub async fn deliveries(
    router: web::Data<Router>,
    Caller(caller): Caller,
    path: web::Path<String>,
    params: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    find(&router, &path)?;
    let (offset, limit) = super::tickets::paging(&params.offset, &params.limit)?;
    let (deliveries, total) = router.store().webhook_deliveries(&path, offset, limit).await?;
    Ok(HttpResponse::Ok().json(DeliveryPage { deliveries, total, offset, limit }))
}

/// Send a delivery again (now), whatever its state; same `webhook-id`.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks",
    params(("id" = String, Path), ("delivery_id" = String, Path)), responses(
    (status = 202, description = "Queued for delivery"),
    (status = 404, description = "No such delivery", body = ErrorBody),
))]
pub async fn redeliver(
    router: web::Data<Router>,
    Caller(caller): Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let (sub, delivery) = path.into_inner();
    find(&router, &sub)?;
    if !router.store().webhook_redeliver(&sub, &delivery, router.now_ms()).await? {
        return Err(ApiError::NotFound(format!("subscription {sub} has no delivery {delivery}")));
    }
    Ok(HttpResponse::Accepted().finish())
}

/// The event types a subscription may ask for.
#[utoipa::path(get, path = "/api/v1/webhooks/event-types", tag = "webhooks", responses(
    (status = 200, description = "Event type names", body = [String]),
))]
pub async fn event_types(Caller(caller): Caller) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    Ok(HttpResponse::Ok().json(EVENT_TYPES))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/webhooks")
            .service(web::resource("").post(create).get(list))
            .service(web::resource("/event-types").get(event_types))
            .service(web::resource("/{id}").get(get).patch(patch).delete(delete))
            .service(web::resource("/{id}/rotate-secret").post(rotate))
            .service(web::resource("/{id}/deliveries").get(deliveries))
            .service(web::resource("/{id}/deliveries/{delivery_id}/redeliver").post(redeliver)),
    );
}
