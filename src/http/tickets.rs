//! `/api/v1/tickets`: create, list, get, status changes, retry, compensation, tokens, history.
//!
//! Handlers only translate HTTP to [`Router`] calls and back; every rule lives in the actors crate.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actors::compensation::CompensationRequest;
use actors::enums::{Priority, RequestedStatus, TaskType, TicketStatus};
use actors::history::HistoryPage;
use actors::store::{ListOrder, ListQuery, PlanTicketPage, TicketPage};
use actors::validation::NewTicket;
use actors::{Router, StatusUpdate, Ticket};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::errors::{ApiError, ErrorBody, TransitionErrorBody};
use crate::auth::token::{minted_event, MintError, TokenIssuer};
use crate::auth::verify::{READ, UPDATE};
use crate::metrics::Metrics;

/// Parse a JSON body; the error names the offending field (`sla.timeout_ms: invalid type …`).
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::Unprocessable(format!("body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::Unprocessable(format!("body: {inner}"))
        } else {
            ApiError::Unprocessable(format!("{path}: {inner}"))
        }
    })
}

/// A ticket answer, with its version as ETag (send it back as If-Match for a guarded update).
fn ticket_response(mut res: actix_web::HttpResponseBuilder, t: &Ticket) -> HttpResponse {
    res.insert_header((header::ETAG, format!("\"{}\"", t.version))).json(t)
}

/// `If-Match: "3"` → Some(3); absent or `*` → None.
fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    let Some(value) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse().map(Some).map_err(|_| {
        ApiError::Unprocessable(format!("If-Match: expected a ticket version such as \"3\", got {text:?}"))
    })
}

/// Create a ticket. 201 when created; 200 with the stored ticket when the same ticket already exists
/// (idempotent); 409 when the id exists with different content.
#[utoipa::path(post, path = "/api/v1/tickets", tag = "tickets", request_body = NewTicket, responses(
    (status = 201, description = "Created", body = Ticket),
    (status = 200, description = "The same ticket already existed", body = Ticket),
    (status = 409, description = "The id exists with different content", body = ErrorBody),
    (status = 422, description = "Invalid ticket", body = ErrorBody),
    (status = 503, description = "Overloaded or store unavailable", body = ErrorBody),
))]
pub async fn create_ticket(
    router: web::Data<Router>,
    Caller(caller): Caller,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let new: NewTicket = parse_body(&body)?;
    let (ticket, created) = router.create(new, caller.subject()).await?;
    crate::tracecontext::spans::record_ticket_id(&ticket.ticket_id);
    if created {
        tracing::info!(ticket_id = %ticket.ticket_id, plan_id = %ticket.spec.plan_id, actor = caller.subject(), "ticket created");
        Ok(ticket_response(HttpResponse::Created(), &ticket))
    } else {
        Ok(ticket_response(HttpResponse::Ok(), &ticket))
    }
}

/// List filters and paging.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    pub plan_id: Option<String>,
    pub intent_id: Option<String>,
    /// Any status, case-insensitive.
    pub status: Option<String>,
    /// LOW, NORMAL, HIGH, CRITICAL or a legacy integer.
    pub priority: Option<String>,
    pub task_type: Option<String>,
    /// Only tickets whose id starts with this text.
    pub id_prefix: Option<String>,
    /// `newest` (default): newest first. `next_due`: only unfinished tickets with an SLA instant ahead (a
    /// warning point, the deadline, an attempt's timeout), the soonest first — the tickets closest to a breach.
    pub order: Option<String>,
    /// Keyset paging: empty for the first page, then the previous page's `next_cursor`. A page then costs the
    /// same at any depth, `total` is left out (not counted) and `offset` must be 0. Not with `order=next_due`.
    pub cursor: Option<String>,
    /// ≥ 0, default 0.
    #[param(value_type = Option<i64>)]
    pub offset: Option<String>,
    /// 1–1000, default 100.
    #[param(value_type = Option<i64>)]
    pub limit: Option<String>,
}

fn integer(value: &Option<String>, name: &str, default: i64) -> Result<i64, ApiError> {
    match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ApiError::Unprocessable(format!("{name}: {v:?} is not an integer"))),
    }
}

/// `offset` ≥ 0 (default 0) and `limit` 1–1000 (default 100), or 422 naming the parameter.
pub(crate) fn paging(offset: &Option<String>, limit: &Option<String>) -> Result<(i64, i64), ApiError> {
    paging_by(offset, limit, 100)
}

/// [`paging`] with another default `limit`.
fn paging_by(offset: &Option<String>, limit: &Option<String>, default_limit: i64) -> Result<(i64, i64), ApiError> {
    let offset = integer(offset, "offset", 0)?;
    if offset < 0 {
        return Err(ApiError::Unprocessable("offset: must be ≥ 0".into()));
    }
    let limit = integer(limit, "limit", default_limit)?;
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Unprocessable("limit: must be between 1 and 1000".into()));
    }
    Ok((offset, limit))
}

fn filter<T: std::str::FromStr>(value: &Option<String>) -> Result<Option<T>, ApiError>
where
    T::Err: std::fmt::Display,
{
    value
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(|v| v.parse::<T>().map_err(|e| ApiError::Unprocessable(e.to_string())))
        .transpose()
}

/// List tickets, newest first (or closest to an SLA instant first, `order=next_due`).
///
/// Two ways to page: `offset` (answers `total`, but a deep page reads every row before it), or keyset with
/// `cursor` (pass `cursor=` for the first page, then each answer's `next_cursor` until it is null).
#[utoipa::path(get, path = "/api/v1/tickets", tag = "tickets", params(ListParams), responses(
    (status = 200, description = "A page of tickets", body = TicketPage),
    (status = 422, description = "Invalid filter, order, cursor or paging", body = ErrorBody),
))]
pub async fn list_tickets(
    router: web::Data<Router>,
    Caller(caller): Caller,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let (offset, limit) = paging(&params.offset, &params.limit)?;
    let priority = match params.priority.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(match v.parse::<i64>() {
            Ok(n) => Priority::from_legacy(n).map_err(ApiError::Unprocessable)?,
            Err(_) => v.parse::<Priority>().map_err(|e| ApiError::Unprocessable(e.to_string()))?,
        }),
    };
    let order = match params.order.as_deref().map(str::trim).unwrap_or_default() {
        "" | "newest" => ListOrder::Newest,
        "next_due" => ListOrder::NextDue,
        other => return Err(ApiError::Unprocessable(format!("order: {other:?} is not newest or next_due"))),
    };
    let keyset = params.cursor.is_some();
    if keyset && offset != 0 {
        return Err(ApiError::Unprocessable("offset: must be 0 with cursor (keyset paging)".into()));
    }
    if keyset && order != ListOrder::Newest {
        return Err(ApiError::Unprocessable("cursor: keyset paging is for order=newest only".into()));
    }
    let after = params.cursor.as_deref().filter(|c| !c.is_empty()).map(super::cursor::decode).transpose()?;
    let query = ListQuery {
        plan_id: params.plan_id.clone().filter(|v| !v.is_empty()),
        intent_id: params.intent_id.clone().filter(|v| !v.is_empty()),
        status: filter::<TicketStatus>(&params.status)?,
        priority,
        task_type: filter::<TaskType>(&params.task_type)?,
        id_prefix: params.id_prefix.clone().filter(|v| !v.is_empty()),
        depends_on: None,
        after,
        skip_total: keyset,
        order,
        offset,
        limit,
    };
    let mut page = router.list(&query).await?;
    // A full page may have a next one (the router may have cut the page short: its `limit` says so).
    if order == ListOrder::Newest && page.tickets.len() as i64 >= page.limit {
        page.next_cursor = page.tickets.last().map(super::cursor::encode);
    }
    Ok(HttpResponse::Ok().json(page))
}

/// Get one ticket.
#[utoipa::path(get, path = "/api/v1/tickets/{ticket_id}", tag = "tickets",
    params(("ticket_id" = String, Path, description = "Ticket id")), responses(
    (status = 200, description = "The ticket (ETag: its version)", body = Ticket),
    (status = 404, description = "No such ticket", body = ErrorBody),
))]
pub async fn get_ticket(
    router: web::Data<Router>,
    Caller(caller): Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_ticket(&path, READ)?;
    let ticket = router.get_shared(&path).await?;
    Ok(ticket_response(HttpResponse::Ok(), &ticket))
}

/// Body of a status change.
#[derive(Debug, Deserialize, ToSchema)]
pub struct StatusBody {
    /// Target status (case-insensitive), or PREEMPTED to give a RUNNING ticket back without spending a retry.
    pub status: String,
    pub error_message: Option<String>,
    /// How long the worker's attempt ran. A result that took longer than the running attempt has run is the
    /// late result of an earlier, timed-out attempt, and is refused (409).
    pub actual_duration_ms: Option<i64>,
    /// Notes on the change (e.g. a reallocation's ids): any JSON object, bounded like a ticket's metadata, kept
    /// in the details of the history record the change makes.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Change a ticket's status (also accepted as `PATCH /api/v1/tickets/{ticket_id}`). Repeating the current
/// status is a no-op. Send `If-Match: "<version>"` to refuse the change if the ticket moved meanwhile.
///
/// A service caller's PENDING on a FAILED ticket is a manual retry (as `POST …/retry`: the self-healing
/// engine reallocates this way). COMPLETED from the attempt the SLA engine timed out is taken while the ticket
/// waits PENDING for its retry and no new attempt started; the lateness is recorded in the history.
#[utoipa::path(patch, path = "/api/v1/tickets/{ticket_id}/status", tag = "tickets",
    params(("ticket_id" = String, Path, description = "Ticket id")), request_body = StatusBody, responses(
    (status = 200, description = "The updated ticket", body = Ticket),
    (status = 404, description = "No such ticket", body = ErrorBody),
    (status = 409, description = "Illegal transition", body = TransitionErrorBody),
    (status = 412, description = "If-Match does not match the ticket's version", body = ErrorBody),
    (status = 422, description = "Unknown status or bad field", body = ErrorBody),
))]
pub async fn update_status(
    router: web::Data<Router>,
    Caller(caller): Caller,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    caller.require_ticket(&path, UPDATE)?;
    let body: StatusBody = parse_body(&body)?;
    let status: RequestedStatus = body
        .status
        .parse()
        .map_err(|e: actors::enums::UnknownVariant| ApiError::Unprocessable(format!("status: {e}")))?;
    caller.require_status_change(&path, status)?;
    let update = StatusUpdate {
        status,
        error_message: body.error_message,
        actual_duration_ms: body.actual_duration_ms,
        expected_version: if_match(&req)?,
        retry_if_failed: caller.is_service(),
        metadata: body.metadata,
    };
    let ticket = router.update_status(&path, update, caller.subject()).await?;
    tracing::info!(ticket_id = %ticket.ticket_id, status = %ticket.status, version = ticket.version, actor = caller.subject(), "ticket status");
    Ok(ticket_response(HttpResponse::Ok(), &ticket))
}

/// Manually retry a FAILED ticket (→ PENDING, retry_count + 1, allowed even with the budget spent).
#[utoipa::path(post, path = "/api/v1/tickets/{ticket_id}/retry", tag = "tickets",
    params(("ticket_id" = String, Path, description = "Ticket id")), responses(
    (status = 200, description = "The ticket, PENDING again", body = Ticket),
    (status = 404, description = "No such ticket", body = ErrorBody),
    (status = 409, description = "The ticket is not FAILED", body = TransitionErrorBody),
))]
pub async fn retry_ticket(
    router: web::Data<Router>,
    Caller(caller): Caller,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let ticket = router.retry(&path, if_match(&req)?, caller.subject()).await?;
    Ok(ticket_response(HttpResponse::Ok(), &ticket))
}

/// Answer of a compensation request.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompensationResponse {
    /// The new COMPENSATE ticket.
    pub ticket_id: String,
    pub original_ticket_id: String,
    /// Status of the compensation ticket.
    pub status: TicketStatus,
    pub action: String,
    pub reason: String,
}

/// Create a COMPENSATE ticket for a RUNNING or FAILED ticket and move that ticket to COMPENSATING, atomically.
/// Repeating the request answers the existing compensation ticket (200).
#[utoipa::path(post, path = "/api/v1/tickets/compensation", tag = "tickets", request_body = CompensationRequest,
    responses(
    (status = 201, description = "Compensation ticket created", body = CompensationResponse),
    (status = 200, description = "The ticket was already being compensated", body = CompensationResponse),
    (status = 404, description = "No such original ticket", body = ErrorBody),
    (status = 409, description = "The original cannot be compensated from its status", body = TransitionErrorBody),
))]
pub async fn compensate(
    router: web::Data<Router>,
    Caller(caller): Caller,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let req: CompensationRequest = parse_body(&body)?;
    let (action, reason) = (req.action().to_owned(), req.reason.clone());
    let (original, comp, created) = router.compensate(req, caller.subject()).await?;
    let body = CompensationResponse {
        ticket_id: comp.ticket_id,
        original_ticket_id: original.ticket_id,
        status: comp.status,
        action: comp.spec.metadata.str("compensation_action").map(str::to_owned).unwrap_or(action),
        reason: comp.spec.metadata.str("compensation_reason").map(str::to_owned).unwrap_or(reason),
    };
    Ok(if created { HttpResponse::Created().json(body) } else { HttpResponse::Ok().json(body) })
}

/// A minted ticket-scoped token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Same value as `access_token` (older clients read this name).
    pub token: String,
    pub token_type: String,
    pub expires_in: i64,
    /// Unix seconds.
    pub expires_at: i64,
    pub ticket_id: String,
    pub scopes: Vec<String>,
}

/// Mint a ticket-scoped JWT (HS256) for a PENDING or RUNNING ticket. Also answered on POST.
#[utoipa::path(get, path = "/api/v1/tickets/{ticket_id}/token", tag = "tickets",
    params(("ticket_id" = String, Path, description = "Ticket id")), responses(
    (status = 200, description = "A token", body = TokenResponse),
    (status = 403, description = "The ticket is finished", body = ErrorBody),
    (status = 404, description = "No such ticket", body = ErrorBody),
))]
pub async fn ticket_token(
    router: web::Data<Router>,
    issuer: web::Data<TokenIssuer>,
    metrics: web::Data<Metrics>,
    Caller(caller): Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let ticket = router.get_shared(&path).await?;
    let now = chrono::Utc::now().timestamp();
    let minted = issuer.mint(&ticket, now).map_err(|e| match e {
        MintError::NotActive { .. } => ApiError::Forbidden(e.to_string()),
        MintError::Signing(_) => ApiError::Internal(e.to_string()),
    })?;
    router.record(minted_event(&ticket, &minted, caller.subject())).await?;
    metrics.jwt_tokens.inc();
    tracing::info!(ticket_id = %ticket.ticket_id, expires_at = minted.expires_at, "ticket token minted");
    Ok(HttpResponse::Ok().json(TokenResponse {
        access_token: minted.token.clone(),
        token: minted.token,
        token_type: "Bearer".into(),
        expires_in: minted.expires_in,
        expires_at: minted.expires_at,
        ticket_id: ticket.ticket_id.clone(),
        scopes: minted.scopes,
    }))
}

/// Paging of a history query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// ≥ 0, default 0.
    #[param(value_type = Option<i64>)]
    pub offset: Option<String>,
    /// 1–1000, default 100.
    #[param(value_type = Option<i64>)]
    pub limit: Option<String>,
}

/// The ticket's audit trail, oldest first: every change (create, status change, retry, SLA event, minted
/// token) with who made it.
#[utoipa::path(get, path = "/api/v1/tickets/{ticket_id}/history", tag = "tickets",
    params(("ticket_id" = String, Path, description = "Ticket id"), HistoryParams), responses(
    (status = 200, description = "A page of audit records", body = HistoryPage),
    (status = 404, description = "No such ticket", body = ErrorBody),
    (status = 422, description = "Invalid paging", body = ErrorBody),
))]
pub async fn ticket_history(
    router: web::Data<Router>,
    Caller(caller): Caller,
    path: web::Path<String>,
    params: web::Query<HistoryParams>,
) -> Result<HttpResponse, ApiError> {
    caller.require_ticket(&path, READ)?;
    let (offset, limit) = paging(&params.offset, &params.limit)?;
    Ok(HttpResponse::Ok().json(router.history(&path, offset, limit).await?))
}

/// The tickets this ticket depends on, as a JSON array.
///
/// Whole tickets (as `GET /api/v1/tickets/{ticket_id}` answers them), in the order the ticket's `dependencies`
/// lists them. A dependency that is not stored (never created, or no longer there) is left out, so the array may
/// be shorter than `dependencies`. Read access as for the ticket itself (a service token, or the ticket's own
/// ticket token).
#[utoipa::path(get, path = "/api/v1/tickets/{ticket_id}/dependencies", tag = "tickets",
    params(("ticket_id" = String, Path, description = "Ticket id")), responses(
    (status = 200, description = "The dependency tickets that exist, in the order the ticket lists them", body = Vec<Ticket>),
    (status = 404, description = "No such ticket", body = ErrorBody),
))]
pub async fn ticket_dependencies(
    router: web::Data<Router>,
    Caller(caller): Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_ticket(&path, READ)?;
    Ok(HttpResponse::Ok().json(router.dependencies(&path).await?))
}

/// The tickets that depend on this one (list it among their `dependencies`), in any status, newest first, as a
/// JSON array of whole tickets; at most 1000. Service token only: they are other tickets.
#[utoipa::path(get, path = "/api/v1/tickets/{ticket_id}/dependents", tag = "tickets",
    params(("ticket_id" = String, Path, description = "Ticket id")), responses(
    (status = 200, description = "The dependent tickets", body = Vec<Ticket>),
    (status = 404, description = "No such ticket", body = ErrorBody),
))]
pub async fn ticket_dependents(
    router: web::Data<Router>,
    Caller(caller): Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    // 404 for an unknown ticket, as its other sub-resources answer (an id nobody lists would answer []).
    router.get_shared(&path).await?;
    let query =
        ListQuery { depends_on: Some(path.into_inner()), skip_total: true, limit: 1000, ..ListQuery::default() };
    Ok(HttpResponse::Ok().json(router.list(&query).await?.tickets))
}

/// Body of a query by plans.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ByPlansBody {
    /// At most 1000 plan ids (repeats count once).
    pub plan_ids: Vec<String>,
}

/// Paging of a query by plans.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ByPlansParams {
    /// ≥ 0, default 0.
    #[param(value_type = Option<i64>)]
    pub offset: Option<String>,
    /// 1–1000, default 1000.
    #[param(value_type = Option<i64>)]
    pub limit: Option<String>,
}

/// The tickets of some plans: id, plan and status of each.
///
/// Answers `{"tickets": [{"ticket_id", "plan_id", "status"}], "total", "offset", "limit"}`, ordered by plan id,
/// then creation, then ticket id. At most 1000 plan ids per request (422 beyond; repeats count once); a page
/// holds up to `limit` tickets (query parameter; default and maximum 1000): when `total` is larger than
/// `offset + limit`, ask again with `?offset=<offset + limit>`. A plan without tickets adds nothing.
#[utoipa::path(post, path = "/api/v1/tickets/by-plans", tag = "tickets", request_body = ByPlansBody,
    params(ByPlansParams), responses(
    (status = 200, description = "A page of the plans' tickets", body = PlanTicketPage),
    (status = 422, description = "More than 1000 plan ids, a bad plan id, or bad paging", body = ErrorBody),
))]
pub async fn tickets_by_plans(
    router: web::Data<Router>,
    Caller(caller): Caller,
    params: web::Query<ByPlansParams>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let (offset, limit) = paging_by(&params.offset, &params.limit, MAX_BY_PLANS_LIMIT)?;
    let body: ByPlansBody = parse_body(&body)?;
    // More than `MAX_PLAN_IDS` plan ids, or one that is no storable text: 422 from the router's check.
    Ok(HttpResponse::Ok().json(router.by_plans(body.plan_ids, offset, limit).await?))
}

/// Default and largest page of [`tickets_by_plans`] (its entries are small).
const MAX_BY_PLANS_LIMIT: i64 = 1000;

/// Register the routes (paths are matched after trailing slashes are trimmed).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/tickets")
            .service(web::resource("").post(create_ticket).get(list_tickets))
            .service(web::resource("/compensation").post(compensate))
            .service(web::resource("/by-plans").post(tickets_by_plans))
            .service(web::resource("/{ticket_id}").get(get_ticket).patch(update_status))
            .service(web::resource("/{ticket_id}/status").patch(update_status))
            .service(web::resource("/{ticket_id}/retry").post(retry_ticket))
            .service(web::resource("/{ticket_id}/history").get(ticket_history))
            .service(web::resource("/{ticket_id}/dependencies").get(ticket_dependencies))
            .service(web::resource("/{ticket_id}/dependents").get(ticket_dependents))
            .service(web::resource("/{ticket_id}/token").get(ticket_token).post(ticket_token)),
    );
}
