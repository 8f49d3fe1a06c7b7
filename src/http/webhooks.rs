//! `/api/v1/webhooks`: worker pools' subscriptions (service tokens only). The signing secret is generated
//! here, shown once (on creation and on rotation), and never again.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use actors::subscription_input::{NewSubscription, SubscriptionPatch};
use actors::validation::ValidationError;
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

fn invalid(e: ValidationError) -> ApiError {
    ApiError::Unprocessable(e.to_string())
}

async fn check_url(api: &WebhookApi, url: &str) -> Result<(), ApiError> {
    api.policy.check(url).await.map_err(|e| ApiError::Unprocessable(format!("url: {e}")))
}

/// After a change: this replica's registry now, the other replicas' at once (cluster mode).
async fn reload(router: &Router) -> Result<(), ApiError> {
    router.webhooks().changed_here();
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
    let id = format!("wh_{}", uuid::Uuid::new_v4().simple());
    let secret = new_secret();
    let subscription = new.into_subscription(id, secret.clone(), router.now_ms()).map_err(invalid)?;
    // Last: the address check resolves the name.
    check_url(&api, &subscription.url).await?;
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
    let current = find(&router, &path)?;
    let url_changed = p.url.is_some();
    let s = p.apply(&current, router.now_ms()).map_err(invalid)?;
    if url_changed {
        check_url(&api, &s.url).await?;
    }
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
