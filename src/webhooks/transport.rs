//! The HTTP side of a delivery (awc): the exact bytes, their Standard Webhooks signature, the headers, the
//! address check (in the client's connector: [`GuardedConnector`]), the timeout, and a receiver's
//! `Retry-After`. Runs on the webhook actor's arbiter (awc's client is per thread).

use std::time::{Duration, SystemTime};

use actors::webhooks::{Delivery, SendOutcome, Subscription, WebhookTransport};
use actors::Ticket;
use async_trait::async_trait;
use serde_json::json;
use tracing::Instrument as _;

use super::address::{target, AddressError, AddressPolicy};
use super::connect::GuardedConnector;
use super::sign::signature_header;
use crate::auth::token::TokenIssuer;

/// See the module docs.
pub struct HttpTransport {
    client: awc::Client,
    /// Signs deliveries to a ticket's own `metadata.webhook_url` (they have no subscription).
    legacy_secret: String,
    /// Mints the ticket-scoped token a `ticket.ready` delivery carries.
    issuer: TokenIssuer,
}

impl HttpTransport {
    pub fn new(timeout: Duration, policy: AddressPolicy, legacy_secret: String, issuer: TokenIssuer) -> Self {
        // Every connection, for subscriptions and `metadata.webhook_url` alike, goes through the policy.
        let connector = awc::Connector::new().connector(GuardedConnector::new(policy));
        let client = awc::Client::builder().connector(connector).timeout(timeout).disable_redirects().finish();
        HttpTransport { client, legacy_secret, issuer }
    }

    /// The body: `{"type", "timestamp", "data": {"ticket", …}}`; `ticket.ready` also carries a fresh token.
    fn body(&self, d: &Delivery) -> Vec<u8> {
        let mut data = d.data.clone();
        if d.event_type == "ticket.ready" {
            if let Ok(ticket) = serde_json::from_value::<Ticket>(data["ticket"].clone()) {
                if let Ok(minted) = self.issuer.mint(&ticket, chrono::Utc::now().timestamp()) {
                    data["token"] = json!({
                        "access_token": minted.token, "token_type": "Bearer",
                        "expires_at": minted.expires_at, "scopes": minted.scopes,
                    });
                }
            }
        }
        let timestamp = chrono::DateTime::from_timestamp_millis(d.at).unwrap_or_default().to_rfc3339();
        serde_json::to_vec(&json!({ "type": d.event_type, "timestamp": timestamp, "data": data }))
            .expect("a JSON value serializes")
    }
}

#[async_trait(?Send)]
impl WebhookTransport for HttpTransport {
    async fn send(&self, d: &Delivery, subscription: Option<&Subscription>) -> SendOutcome {
        // The attempt's span is a child of the work that caused the event (stored with the delivery), and the
        // receiver's span a child of the attempt's.
        let span = tracing::info_span!(
            "webhook.send",
            ticket_id = %d.ticket_id,
            event_type = %d.event_type,
            webhook_id = %d.id,
            attempt = d.attempts + 1,
            subscription = d.subscription_id.as_deref().unwrap_or("metadata.webhook_url"),
        );
        if let Some(parent) = &d.traceparent {
            crate::tracecontext::set_stored_parent(&span, parent);
        }
        let traceparent = crate::tracecontext::traceparent_of(&span)
            .or_else(|| d.traceparent.clone())
            .unwrap_or_else(|| actors::trace::traceparent_in(None));
        self.attempt(d, subscription, traceparent).instrument(span).await
    }
}

impl HttpTransport {
    async fn attempt(&self, d: &Delivery, subscription: Option<&Subscription>, traceparent: String) -> SendOutcome {
        // The URL's form only: its addresses are checked by the connector, on the resolution it connects with.
        if let Err(e) = target(&d.url) {
            return SendOutcome { status: None, error: Some(e.to_string()), retry_after: None, latency: None };
        }
        let body = self.body(d);
        let now = chrono::Utc::now();
        let secrets = match subscription {
            Some(s) => s.signing_secrets(now.timestamp_millis()),
            None => vec![self.legacy_secret.as_str()],
        };
        let signature = signature_header(&secrets, &d.id, now.timestamp(), &body);
        let request = self
            .client
            .post(&d.url)
            .insert_header(("content-type", "application/json"))
            .insert_header(("user-agent", "execution-ticket-service-webhooks"))
            .insert_header(("webhook-id", d.id.as_str()))
            .insert_header(("webhook-timestamp", now.timestamp().to_string()))
            .insert_header(("webhook-signature", signature))
            .insert_header(("x-ticket-id", d.ticket_id.as_str()))
            .insert_header(("x-event-type", d.event_type.as_str()))
            .insert_header(("traceparent", traceparent));
        match request.send_body(body).await {
            Ok(res) => {
                let status = res.status().as_u16();
                let error = (!res.status().is_success()).then(|| format!("HTTP {status}"));
                // RFC 9110 §10.2.3 (503) and RFC 6585 §4 (429).
                let retry_after = matches!(status, 429 | 503)
                    .then(|| res.headers().get(awc::http::header::RETRY_AFTER))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                SendOutcome { status: Some(status), error, retry_after, latency: None }
            }
            Err(e) => SendOutcome { status: None, error: Some(describe(&e)), retry_after: None, latency: None },
        }
    }
}

/// A `Retry-After` value as a wait from `now`: delay-seconds or an HTTP-date (a date in the past: no wait).
/// Anything else is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The error of a failed request; a refusal by the address policy (in the connector) is named as such.
fn describe(e: &awc::error::SendRequestError) -> String {
    if let awc::error::SendRequestError::Connect(awc::error::ConnectError::Resolver(inner)) = e {
        if let Some(refused) = inner.downcast_ref::<AddressError>() {
            return refused.to_string();
        }
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO), "in the past");
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
