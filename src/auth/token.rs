//! Ticket-scoped JWTs (HS256) handed to worker agents: they name one ticket and what may be done with it.

use actors::enums::{SecurityLevel, TicketStatus};
use actors::Ticket;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::config::JwtSettings;

/// Issuer of every token this service mints.
pub const ISSUER: &str = "neural-hive-mind";
/// Audience of ticket-scoped tokens.
pub const AUDIENCE: &str = "worker-agents";

/// The claims of a ticket-scoped token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketClaims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub ticket_id: String,
    pub plan_id: String,
    pub intent_id: String,
    pub task_type: String,
    pub security_level: String,
    pub required_capabilities: Vec<String>,
    pub scopes: Vec<String>,
}

/// A freshly minted token.
#[derive(Debug, Clone)]
pub struct MintedToken {
    pub token: String,
    pub expires_in: i64,
    pub expires_at: i64,
    pub scopes: Vec<String>,
}

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("tokens are issued only for PENDING or RUNNING tickets; ticket {ticket_id} is {status}")]
    NotActive { ticket_id: String, status: TicketStatus },
    #[error("could not sign the token: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
}

/// Signs ticket-scoped tokens with the configured secret.
#[derive(Clone)]
pub struct TokenIssuer {
    key: EncodingKey,
    ttl_seconds: i64,
}

impl TokenIssuer {
    pub fn new(settings: &JwtSettings) -> Self {
        TokenIssuer {
            key: EncodingKey::from_secret(settings.secret.as_bytes()),
            ttl_seconds: settings.expiration_seconds,
        }
    }

    /// Scopes a token for `t` carries.
    pub fn scopes(t: &Ticket) -> Vec<String> {
        let mut scopes = vec![
            "ticket:read".to_owned(),
            "ticket:update".to_owned(),
            format!("task:{}", t.spec.task_type.as_str().to_lowercase()),
        ];
        if matches!(t.spec.security_level, SecurityLevel::Confidential | SecurityLevel::Restricted) {
            scopes.push("security:elevated".to_owned());
        }
        scopes
    }

    /// Mint a token for `t` at `now_seconds` (unix seconds).
    pub fn mint(&self, t: &Ticket, now_seconds: i64) -> Result<MintedToken, MintError> {
        if !matches!(t.status, TicketStatus::Pending | TicketStatus::Running) {
            return Err(MintError::NotActive { ticket_id: t.ticket_id.clone(), status: t.status });
        }
        let scopes = Self::scopes(t);
        let exp = now_seconds + self.ttl_seconds;
        let claims = TicketClaims {
            sub: t.ticket_id.clone(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            exp,
            iat: now_seconds,
            jti: uuid::Uuid::new_v4().to_string(),
            ticket_id: t.ticket_id.clone(),
            plan_id: t.spec.plan_id.clone(),
            intent_id: t.spec.intent_id.clone(),
            task_type: t.spec.task_type.as_str().to_owned(),
            security_level: t.spec.security_level.as_str().to_owned(),
            required_capabilities: t.spec.required_capabilities.clone(),
            scopes: scopes.clone(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)?;
        Ok(MintedToken { token, expires_in: self.ttl_seconds, expires_at: exp, scopes })
    }
}

#[derive(Serialize)]
struct ServiceTokenClaims<'a> {
    sub: &'a str,
    aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    iat: i64,
    exp: i64,
}

/// An HS256 service token for `subject`, valid `ttl_seconds`, accepted by this service's configuration
/// (development token, tests, tools).
pub fn service_token(
    secret: &str,
    auth: &crate::config::AuthSettings,
    subject: &str,
    ttl_seconds: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let claims = ServiceTokenClaims {
        sub: subject,
        aud: &auth.audience,
        iss: auth.issuer.as_deref(),
        iat: now,
        exp: now + ttl_seconds,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
}

/// The audit record of a minted ticket token (the token itself is never recorded).
pub fn minted_event(ticket: &Ticket, minted: &MintedToken, actor: &str) -> actors::history::AuditEvent {
    actors::history::AuditEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        ticket_id: ticket.ticket_id.clone(),
        kind: "token.minted".into(),
        from_status: None,
        to_status: Some(ticket.status.as_str().to_owned()),
        version: None,
        actor: actor.to_owned(),
        at: chrono::Utc::now().timestamp_millis(),
        details: serde_json::json!({ "scopes": minted.scopes, "expires_at": minted.expires_at }),
        traceparent: crate::tracecontext::current_traceparent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actors::validation::NewTicket;
    use jsonwebtoken::{DecodingKey, Validation};

    fn ticket(level: &str) -> Ticket {
        let new: NewTicket = serde_json::from_value(serde_json::json!({
            "ticket_id": "t-9", "plan_id": "p", "intent_id": "i", "decision_id": "d", "task_id": "x",
            "task_type": "DEPLOY", "description": "d", "priority": 5, "risk_band": "high",
            "sla": {"deadline": 1, "timeout_ms": 1, "max_retries": 0},
            "qos": {"delivery_mode": "EXACTLY_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
            "security_level": level
        }))
        .unwrap();
        new.validate(0, String::new).unwrap().ticket
    }

    #[test]
    fn minted_tokens_verify_with_the_secret_and_carry_the_scopes() {
        let settings = JwtSettings { secret: "s3cret".into(), expiration_seconds: 60, generated: false };
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let minted = TokenIssuer::new(&settings).mint(&ticket("RESTRICTED"), now).unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        let data =
            jsonwebtoken::decode::<TicketClaims>(&minted.token, &DecodingKey::from_secret(b"s3cret"), &validation)
                .unwrap();
        assert_eq!(data.claims.sub, "t-9");
        assert_eq!(data.claims.exp, now + 60);
        assert_eq!(data.claims.scopes, ["ticket:read", "ticket:update", "task:deploy", "security:elevated"]);
        let wrong = jsonwebtoken::decode::<TicketClaims>(&minted.token, &DecodingKey::from_secret(b"x"), &validation);
        assert!(wrong.is_err());
        assert!(!TokenIssuer::scopes(&ticket("PUBLIC")).contains(&"security:elevated".to_owned()));
    }

    #[test]
    fn finished_tickets_get_no_token() {
        let settings = JwtSettings { secret: "s".into(), expiration_seconds: 60, generated: false };
        let mut t = ticket("PUBLIC");
        t.status = TicketStatus::Completed;
        assert!(matches!(TokenIssuer::new(&settings).mint(&t, 0), Err(MintError::NotActive { .. })));
    }
}
