//! `ticket_service.TicketService`: each RPC authorises the caller and calls the [`Router`]; no ticket rule is
//! repeated here.

use std::pin::Pin;
use std::sync::Arc;

use actors::{Router, Ticket};
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{auth_status, status_of, ticket_to_proto};
use super::decode;
use super::pb::{self, ticket_service_server::TicketService};
use super::{watch, worker};
use crate::auth::token::{minted_event, MintError, TokenIssuer};
use crate::auth::verify::{Authenticated, Authenticator, Principal, READ, UPDATE};
use crate::metrics::Metrics;
use crate::ratelimit::{CallerKey, PrincipalKind, RateLimited, RateLimits, RouteClass};
use crate::tracecontext::spans::record_ticket_id;

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct GrpcTickets {
    pub router: Router,
    pub auth: Arc<Authenticator>,
    pub issuer: TokenIssuer,
    pub metrics: Metrics,
    /// The open WatchTickets streams and their bounds.
    pub watchers: watch::Watchers,
    /// Per-caller rate limits.
    pub rate_limits: RateLimits,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn ticket_response(t: &Ticket) -> Response<pb::TicketResponse> {
    Response::new(pb::TicketResponse { ticket: Some(ticket_to_proto(t)) })
}

/// RESOURCE_EXHAUSTED with `google.rpc.RetryInfo` in its details, and the delay in whole seconds as a
/// `retry-after` metadata entry for clients that do not decode details.
pub(crate) fn rate_limited_status(limited: &RateLimited) -> Status {
    use tonic_types::{ErrorDetails, StatusExt as _};
    let details = ErrorDetails::with_retry_info(Some(limited.retry_after));
    let mut status = Status::with_error_details(tonic::Code::ResourceExhausted, limited.to_string(), details);
    if let Ok(value) = limited.retry_after_seconds().to_string().parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

impl GrpcTickets {
    fn caller<T>(&self, req: &Request<T>, class: RouteClass) -> Result<Principal, Status> {
        self.caller_until(req, class).map(|a| a.principal)
    }

    /// The caller (its token, and the client certificate of its connection) and until when its credential is
    /// accepted (streams end then); the call is taken from the caller's `class` budget first.
    fn caller_until<T>(&self, req: &Request<T>, class: RouteClass) -> Result<Authenticated, Status> {
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let conn = req.extensions().get::<super::ConnInfo>();
        let verified = self.auth.authenticate_peer(header, conn.and_then(|c| c.peer.as_ref()));
        let (key, kind) = match &verified {
            Ok(a) if a.principal != Principal::Anonymous => {
                (CallerKey::Principal(a.principal.subject().into()), a.kind())
            }
            _ => {
                let addr = conn.and_then(|c| c.remote_addr);
                (addr.map_or(CallerKey::Unknown, |a| CallerKey::Peer(a.ip())), PrincipalKind::Peer)
            }
        };
        self.rate_limits.check(class, &key, kind).map_err(|e| rate_limited_status(&e))?;
        verified.map_err(auth_status)
    }
}

#[tonic::async_trait]
impl TicketService for GrpcTickets {
    async fn get_ticket(&self, req: Request<pb::GetTicketRequest>) -> Result<Response<pb::GetTicketResponse>, Status> {
        let caller = self.caller(&req, RouteClass::Read)?;
        let id = req.into_inner().ticket_id;
        record_ticket_id(&id);
        caller.require_ticket(&id, READ).map_err(auth_status)?;
        let t = self.router.get_shared(&id).await.map_err(status_of)?;
        Ok(Response::new(pb::GetTicketResponse { ticket: Some(ticket_to_proto(&t)) }))
    }

    async fn list_tickets(
        &self,
        req: Request<pb::ListTicketsRequest>,
    ) -> Result<Response<pb::ListTicketsResponse>, Status> {
        self.caller(&req, RouteClass::Read)?.require_service().map_err(auth_status)?;
        let query = decode::list_query(req.into_inner())?;
        let page = self.router.list(&query).await.map_err(status_of)?;
        Ok(Response::new(pb::ListTicketsResponse {
            tickets: page.tickets.iter().map(ticket_to_proto).collect(),
            total: i32::try_from(page.total.unwrap_or_default()).unwrap_or(i32::MAX),
        }))
    }

    async fn update_ticket_status(
        &self,
        req: Request<pb::UpdateTicketStatusRequest>,
    ) -> Result<Response<pb::UpdateTicketStatusResponse>, Status> {
        let caller = self.caller(&req, RouteClass::Write)?;
        let r = req.into_inner();
        record_ticket_id(&r.ticket_id);
        caller.require_ticket(&r.ticket_id, UPDATE).map_err(auth_status)?;
        let update = decode::status_update(&r.status, r.error_message, r.actual_duration_ms, r.expected_version)?;
        caller.require_status_change(&r.ticket_id, update.status).map_err(auth_status)?;
        let t = self.router.update_status(&r.ticket_id, update, caller.subject()).await.map_err(status_of)?;
        Ok(Response::new(pb::UpdateTicketStatusResponse { ticket: Some(ticket_to_proto(&t)) }))
    }

    async fn generate_token(
        &self,
        req: Request<pb::GenerateTokenRequest>,
    ) -> Result<Response<pb::GenerateTokenResponse>, Status> {
        let caller = self.caller(&req, RouteClass::Token)?;
        caller.require_service().map_err(auth_status)?;
        let id = req.into_inner().ticket_id;
        record_ticket_id(&id);
        let t = self.router.get_shared(&id).await.map_err(status_of)?;
        let minted = self.issuer.mint(&t, chrono::Utc::now().timestamp()).map_err(|e| match e {
            MintError::NotActive { .. } => Status::failed_precondition(e.to_string()),
            MintError::Signing(_) => Status::internal(e.to_string()),
        })?;
        self.router.record(minted_event(&t, &minted, caller.subject())).await.map_err(status_of)?;
        self.metrics.jwt_tokens.inc();
        Ok(Response::new(pb::GenerateTokenResponse {
            access_token: minted.token,
            expires_at: minted.expires_at,
            scopes: minted.scopes,
        }))
    }

    async fn create_ticket(
        &self,
        req: Request<pb::CreateTicketRequest>,
    ) -> Result<Response<pb::CreateTicketResponse>, Status> {
        let caller = self.caller(&req, RouteClass::Write)?;
        caller.require_service().map_err(auth_status)?;
        let new = decode::create(req.into_inner())?;
        let (t, created) = self.router.create(new, caller.subject()).await.map_err(status_of)?;
        record_ticket_id(&t.ticket_id);
        Ok(Response::new(pb::CreateTicketResponse { ticket: Some(ticket_to_proto(&t)), created }))
    }

    async fn retry_ticket(&self, req: Request<pb::RetryTicketRequest>) -> Result<Response<pb::TicketResponse>, Status> {
        let caller = self.caller(&req, RouteClass::Write)?;
        caller.require_service().map_err(auth_status)?;
        let r = req.into_inner();
        record_ticket_id(&r.ticket_id);
        let t = self.router.retry(&r.ticket_id, r.expected_version, caller.subject()).await.map_err(status_of)?;
        Ok(ticket_response(&t))
    }

    async fn cancel_ticket(
        &self,
        req: Request<pb::CancelTicketRequest>,
    ) -> Result<Response<pb::TicketResponse>, Status> {
        let caller = self.caller(&req, RouteClass::Write)?;
        caller.require_service().map_err(auth_status)?;
        let r = req.into_inner();
        record_ticket_id(&r.ticket_id);
        let id = r.ticket_id.clone();
        let update = decode::cancellation(r)?;
        let t = self.router.update_status(&id, update, caller.subject()).await.map_err(status_of)?;
        Ok(ticket_response(&t))
    }

    async fn compensate_ticket(
        &self,
        req: Request<pb::CompensateTicketRequest>,
    ) -> Result<Response<pb::CompensateTicketResponse>, Status> {
        let caller = self.caller(&req, RouteClass::Write)?;
        caller.require_service().map_err(auth_status)?;
        let r = req.into_inner();
        record_ticket_id(&r.original_ticket_id);
        let request = decode::compensation(r)?;
        let (original, comp, created) = self.router.compensate(request, caller.subject()).await.map_err(status_of)?;
        let meta = |k: &str| comp.spec.metadata.text(k).map(|v| v.into_owned()).unwrap_or_default();
        Ok(Response::new(pb::CompensateTicketResponse {
            ticket_id: comp.ticket_id.clone(),
            original_ticket_id: original.ticket_id,
            status: comp.status.as_str().to_owned(),
            action: meta("compensation_action"),
            reason: meta("compensation_reason"),
            created,
            compensation_ticket: Some(ticket_to_proto(&comp)),
        }))
    }

    async fn get_ticket_history(
        &self,
        req: Request<pb::GetTicketHistoryRequest>,
    ) -> Result<Response<pb::GetTicketHistoryResponse>, Status> {
        let caller = self.caller(&req, RouteClass::Read)?;
        let r = req.into_inner();
        record_ticket_id(&r.ticket_id);
        caller.require_ticket(&r.ticket_id, READ).map_err(auth_status)?;
        if r.offset < 0 || !(0..=1000).contains(&r.limit) {
            return Err(Status::invalid_argument("offset must be ≥ 0 and limit between 0 (default 100) and 1000"));
        }
        let limit = if r.limit == 0 { 100 } else { r.limit };
        let page = self.router.history(&r.ticket_id, r.offset, limit).await.map_err(status_of)?;
        let entries = page
            .events
            .into_iter()
            .map(|e| pb::HistoryEntry {
                at: e.at,
                event_type: e.kind,
                status: e.to_status.unwrap_or_default(),
                version: e.version.unwrap_or(0),
                actor: e.actor,
                details: if e.details.is_null() { String::new() } else { e.details.to_string() },
                event_id: e.event_id,
                from_status: e.from_status.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::GetTicketHistoryResponse { entries, total: page.total }))
    }

    type StreamStatusUpdatesStream = BoxStream<pb::WorkerUpdateResult>;

    async fn stream_status_updates(
        &self,
        req: Request<Streaming<pb::WorkerUpdate>>,
    ) -> Result<Response<Self::StreamStatusUpdatesStream>, Status> {
        let caller = self.caller_until(&req, RouteClass::Write)?;
        let rx = worker::serve(self.router.clone(), caller.principal, req.into_inner(), caller.valid_until);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchTicketsStream = BoxStream<pb::TicketEvent>;

    async fn watch_tickets(
        &self,
        req: Request<pb::WatchTicketsRequest>,
    ) -> Result<Response<Self::WatchTicketsStream>, Status> {
        let caller = self.caller_until(&req, RouteClass::Read)?;
        let filter = watch::Filter::new(req.into_inner())?;
        filter.authorize(&caller.principal).map_err(auth_status)?;
        let slot = self.watchers.open(caller.principal.subject())?;
        let rx = watch::serve(self.router.clone(), filter, slot, caller.valid_until, watch::event);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
