//! Verifying bearer tokens and deciding what their holder may do. Shared by the REST and gRPC front ends.
//!
//! Two kinds of token are accepted:
//! - **ticket-scoped** tokens this service minted (HS256, `JWT_SECRET_KEY`, iss `neural-hive-mind`, aud
//!   `worker-agents`): read and update that one ticket, with the scopes they carry;
//! - **service** tokens for the orchestrator and operators: HS256 with `SERVICE_JWT_SECRET`, or RS256/ES256
//!   verified against the keys of `SERVICE_JWKS_FILE` (e.g. SPIFFE JWT-SVIDs), with the configured audience and
//!   (optional) issuer. They may do everything.
//!
//! The algorithm is taken from an allow-list and each algorithm only ever meets keys of its own family (HMAC
//! secrets for HS256, JWKS public keys for RS256/ES256), so neither `alg: none` nor HS/RS key confusion works.
//!
//! A token that verified is remembered until it expires (`Verified`): clients send the same token on every
//! call, and verifying it (an HMAC or two, or an RSA/ECDSA check, and JSON) cost more than half of a GetTicket.

use std::path::Path;

use anyhow::Context as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::token::{TicketClaims, AUDIENCE, ISSUER};
use crate::config::{AuthMode, AuthSettings, JwtSettings};
use crate::tls::PeerIdentity;

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// A service token (orchestrator, operator): may do everything.
    Service { subject: String },
    /// A ticket-scoped token: only its own ticket, only its scopes.
    Ticket { ticket_id: String, subject: String, scopes: Vec<String> },
    /// AUTH_MODE=disabled: everything is allowed.
    Anonymous,
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, or a token that does not verify: 401 / UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token that does not allow this call: 403 / PERMISSION_DENIED.
    #[error("{0}")]
    Forbidden(String),
}

/// Scope needed to read a ticket.
pub const READ: &str = "ticket:read";
/// Scope needed to change a ticket.
pub const UPDATE: &str = "ticket:update";

impl Principal {
    /// Recorded as the author of every change the principal makes.
    pub fn subject(&self) -> &str {
        match self {
            Principal::Service { subject } | Principal::Ticket { subject, .. } => subject,
            Principal::Anonymous => "anonymous",
        }
    }

    /// A service token (or no auth at all): a caller that may do everything.
    pub fn is_service(&self) -> bool {
        matches!(self, Principal::Service { .. } | Principal::Anonymous)
    }

    /// Only service tokens (or no auth at all).
    pub fn require_service(&self) -> Result<(), AuthError> {
        match self {
            Principal::Service { .. } | Principal::Anonymous => Ok(()),
            Principal::Ticket { ticket_id, .. } => Err(AuthError::Forbidden(format!(
                "this call needs a service token; the token presented is scoped to ticket {ticket_id}"
            ))),
        }
    }

    /// A service token, or a token for ticket `id` that carries `scope`.
    pub fn require_ticket(&self, id: &str, scope: &str) -> Result<(), AuthError> {
        match self {
            Principal::Service { .. } | Principal::Anonymous => Ok(()),
            Principal::Ticket { ticket_id, .. } if ticket_id != id => {
                Err(AuthError::Forbidden(format!("the token is scoped to ticket {ticket_id}, not {id}")))
            }
            Principal::Ticket { scopes, .. } if !scopes.iter().any(|s| s == scope) => {
                Err(AuthError::Forbidden(format!("the token lacks the scope {scope}")))
            }
            Principal::Ticket { .. } => Ok(()),
        }
    }

    /// [`require_ticket`](Self::require_ticket) with the update scope, and a ticket token may only make the
    /// moves a worker reports ([`RequestedStatus::is_worker_report`](actors::enums::RequestedStatus::is_worker_report)).
    pub fn require_status_change(&self, id: &str, to: actors::enums::RequestedStatus) -> Result<(), AuthError> {
        self.require_ticket(id, UPDATE)?;
        match self {
            Principal::Ticket { .. } if !to.is_worker_report() => Err(AuthError::Forbidden(format!(
                "a ticket token may report RUNNING, COMPLETED, FAILED or PREEMPTED; {} needs a service token",
                to.as_str()
            ))),
            _ => Ok(()),
        }
    }
}

struct JwksKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens; see the module docs.
pub struct Authenticator {
    disabled: bool,
    ticket_key: DecodingKey,
    service_secret: Option<DecodingKey>,
    jwks: Vec<JwksKey>,
    issuer: Option<String>,
    audience: String,
    leeway: u64,
    /// SERVICE_SPIFFE_IDS: client-certificate identities that are service principals by themselves.
    spiffe_service_ids: std::collections::HashSet<String>,
    verified: Verified,
}

/// Tokens that verified, by their exact text, until they expire. The keys are fixed for the life of the process,
/// so a token that verified once verifies until its `exp` (plus leeway): only that is checked again. Refused
/// tokens are not remembered (a refusal is cheap and must say why). Bounded: when full it is emptied, so a
/// flood of distinct tokens costs what it cost without it.
#[derive(Default)]
struct Verified(dashmap::DashMap<Box<str>, Authenticated>);

impl Verified {
    const MAX: usize = 16_384;

    fn get(&self, token: &str, now: i64) -> Option<Authenticated> {
        let hit = self.0.get(token)?;
        if hit.valid_until.is_some_and(|until| now <= until) {
            return Some(hit.clone());
        }
        drop(hit);
        self.0.remove(token);
        None
    }

    fn put(&self, token: &str, verified: &Authenticated) {
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(token.into(), verified.clone());
    }
}

#[derive(Deserialize)]
struct ServiceClaims {
    sub: String,
    exp: i64,
}

/// What proved the caller's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token.
    Token,
    /// A client certificate (mutual TLS) whose SPIFFE ID SERVICE_SPIFFE_IDS maps to the service role.
    Certificate,
    /// Nothing: authentication is disabled.
    None,
}

/// A verified caller and until when its token is accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    pub principal: Principal,
    /// Unix seconds (the token's `exp` plus the configured leeway, or the client certificate's notAfter) after
    /// which the credential no longer verifies; None when authentication is disabled. Long-lived calls (gRPC
    /// streams) end then.
    pub valid_until: Option<i64>,
    pub credential: Credential,
}

impl Authenticated {
    /// The `principal_kind` of rate limiting (`Peer` for anonymous callers: they are told apart by address).
    pub fn kind(&self) -> crate::ratelimit::PrincipalKind {
        use crate::ratelimit::PrincipalKind;
        match (&self.principal, self.credential) {
            (Principal::Anonymous, _) => PrincipalKind::Peer,
            (Principal::Ticket { .. }, _) => PrincipalKind::Ticket,
            (Principal::Service { .. }, Credential::Certificate) => PrincipalKind::Spiffe,
            (Principal::Service { .. }, _) => PrincipalKind::Service,
        }
    }
}

fn load_jwks(path: &Path) -> anyhow::Result<Vec<JwksKey>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading SERVICE_JWKS_FILE {}", path.display()))?;
    let set: JwkSet = serde_json::from_str(&text).with_context(|| format!("{} is not a JWKS", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(ka), _) => ka.to_string().parse::<Algorithm>().ok(),
            (None, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
            (None, jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_)) => Some(Algorithm::ES256),
            _ => None,
        };
        let Some(alg @ (Algorithm::RS256 | Algorithm::ES256)) = alg else {
            tracing::warn!(kid = ?jwk.common.key_id, "skipping a JWKS key that is not RS256 or ES256");
            continue;
        };
        let key = DecodingKey::from_jwk(jwk).context("unusable JWKS key")?;
        keys.push(JwksKey { kid: jwk.common.key_id.clone(), alg, key });
    }
    anyhow::ensure!(!keys.is_empty(), "{} holds no RS256 or ES256 key", path.display());
    Ok(keys)
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "the token's audience is not accepted".into(),
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".into(),
        other => format!("invalid token: {other:?}"),
    }
}

impl Authenticator {
    pub fn new(auth: &AuthSettings, jwt: &JwtSettings) -> anyhow::Result<Self> {
        let jwks = match &auth.jwks_file {
            Some(path) => load_jwks(path)?,
            None => Vec::new(),
        };
        Ok(Authenticator {
            disabled: auth.mode == AuthMode::Disabled,
            ticket_key: DecodingKey::from_secret(jwt.secret.as_bytes()),
            service_secret: auth.service_secret.as_ref().map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway: auth.leeway_seconds,
            spiffe_service_ids: auth.spiffe_service_ids.iter().cloned().collect(),
            verified: Verified::default(),
        })
    }

    fn validation(&self, alg: Algorithm, issuer: Option<&str>, audience: &str) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_audience(&[audience]);
        match issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                v.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
            }
            None => v.set_required_spec_claims(&["exp", "sub", "aud"]),
        }
        v
    }

    fn service(
        &self,
        token: &str,
        alg: Algorithm,
        key: &DecodingKey,
    ) -> Result<Authenticated, jsonwebtoken::errors::Error> {
        let v = self.validation(alg, self.issuer.as_deref(), &self.audience);
        let claims = jsonwebtoken::decode::<ServiceClaims>(token, key, &v)?.claims;
        Ok(self.until(Principal::Service { subject: claims.sub }, claims.exp))
    }

    fn until(&self, principal: Principal, exp: i64) -> Authenticated {
        let leeway = i64::try_from(self.leeway).unwrap_or(i64::MAX);
        Authenticated { principal, valid_until: Some(exp.saturating_add(leeway)), credential: Credential::Token }
    }

    /// Verify the value of an `authorization` header (or metadata entry).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        self.authenticate_until(authorization).map(|a| a.principal)
    }

    /// [`Authenticator::authenticate`], also saying until when the token is accepted.
    pub fn authenticate_until(&self, authorization: Option<&str>) -> Result<Authenticated, AuthError> {
        self.authenticate_peer(authorization, None)
    }

    /// Verify a call's credentials: its `authorization` value and the client certificate of its connection
    /// (mutual TLS). A certificate whose SPIFFE ID is in SERVICE_SPIFFE_IDS makes the caller that service
    /// principal without a token; a token sent with such a certificate must name the same principal (a JWT-SVID
    /// of the same SPIFFE ID), else the call is refused. Any other certificate only secures the transport: the
    /// token decides.
    pub fn authenticate_peer(
        &self,
        authorization: Option<&str>,
        peer: Option<&PeerIdentity>,
    ) -> Result<Authenticated, AuthError> {
        if self.disabled {
            return Ok(Authenticated {
                principal: Principal::Anonymous,
                valid_until: None,
                credential: Credential::None,
            });
        }
        let spiffe_id = peer.and_then(|p| p.spiffe_id.as_deref());
        let mapped = spiffe_id.filter(|id| self.spiffe_service_ids.contains(*id));
        match (mapped, authorization) {
            (Some(id), None) => Ok(Authenticated {
                principal: Principal::Service { subject: id.to_owned() },
                valid_until: peer.and_then(|p| p.not_after),
                credential: Credential::Certificate,
            }),
            (Some(id), Some(_)) => {
                let token = self.verify_token(authorization)?;
                match &token.principal {
                    Principal::Service { subject } if subject == id => Ok(token),
                    other => Err(AuthError::Unauthenticated(format!(
                        "the bearer token names {} but the client certificate is {id}: a token sent with a client \
                         certificate mapped to the service role must name the same principal (or be left out)",
                        other.subject()
                    ))),
                }
            }
            (None, None) if spiffe_id.is_some() => Err(AuthError::Unauthenticated(format!(
                "missing authorization: the client certificate's SPIFFE ID {} is not mapped to a role \
                 (SERVICE_SPIFFE_IDS); send 'Bearer <token>'",
                spiffe_id.unwrap_or_default()
            ))),
            (None, _) => self.verify_token(authorization),
        }
    }

    fn verify_token(&self, authorization: Option<&str>) -> Result<Authenticated, AuthError> {
        let value = authorization
            .ok_or_else(|| AuthError::Unauthenticated("missing authorization: send 'Bearer <token>'".into()))?;
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| AuthError::Unauthenticated("authorization must be 'Bearer <token>'".into()))?;
        let now = jsonwebtoken::get_current_timestamp() as i64;
        if let Some(verified) = self.verified.get(token, now) {
            return Ok(verified);
        }
        let verified = self.verify_signed(token)?;
        self.verified.put(token, &verified);
        Ok(verified)
    }

    /// Check `token`'s signature and claims (see the module docs).
    fn verify_signed(&self, token: &str) -> Result<Authenticated, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Unauthenticated(format!("malformed token (or algorithm not allowed): {e}")))?;
        let unauthenticated = |e: jsonwebtoken::errors::Error| AuthError::Unauthenticated(describe(&e));
        match header.alg {
            Algorithm::HS256 => {
                let v = self.validation(Algorithm::HS256, Some(ISSUER), AUDIENCE);
                match jsonwebtoken::decode::<TicketClaims>(token, &self.ticket_key, &v) {
                    Ok(data) if data.claims.ticket_id == data.claims.sub => {
                        let exp = data.claims.exp;
                        let principal = Principal::Ticket {
                            ticket_id: data.claims.ticket_id,
                            subject: format!("ticket-token:{}", data.claims.jti),
                            scopes: data.claims.scopes,
                        };
                        Ok(self.until(principal, exp))
                    }
                    Ok(_) => Err(AuthError::Unauthenticated("ticket token whose sub is not its ticket_id".into())),
                    Err(e) => {
                        let not_a_ticket_token = matches!(
                            e.kind(),
                            ErrorKind::InvalidSignature | ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer
                        );
                        match &self.service_secret {
                            Some(key) if not_a_ticket_token => {
                                self.service(token, Algorithm::HS256, key).map_err(unauthenticated)
                            }
                            _ => Err(unauthenticated(e)),
                        }
                    }
                }
            }
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let candidates: Vec<&JwksKey> = self
                    .jwks
                    .iter()
                    .filter(|k| k.alg == alg && (header.kid.is_none() || k.kid == header.kid))
                    .collect();
                let mut last = AuthError::Unauthenticated(format!("no configured key verifies {alg:?} tokens"));
                for k in candidates {
                    match self.service(token, alg, &k.key) {
                        Ok(p) => return Ok(p),
                        Err(e) => last = unauthenticated(e),
                    }
                }
                Err(last)
            }
            other => Err(AuthError::Unauthenticated(format!("the token's algorithm {other:?} is not allowed"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_until(valid_until: i64) -> Authenticated {
        Authenticated {
            principal: Principal::Service { subject: "orchestrator".into() },
            valid_until: Some(valid_until),
            credential: Credential::Token,
        }
    }

    #[test]
    fn a_remembered_token_is_accepted_until_it_expires_and_not_after() {
        let verified = Verified::default();
        verified.put("token-a", &service_until(1_000));
        assert_eq!(verified.get("token-a", 1_000), Some(service_until(1_000)), "valid through its last second");
        assert_eq!(verified.get("token-b", 1_000), None, "only the exact text");
        assert_eq!(verified.get("token-a", 1_001), None, "expired: verified again (and refused)");
        assert!(verified.0.is_empty(), "the expired entry is dropped");
    }

    #[test]
    fn the_memory_is_bounded() {
        let verified = Verified::default();
        for i in 0..=Verified::MAX {
            verified.put(&format!("token-{i}"), &service_until(1_000));
        }
        assert!(verified.0.len() <= Verified::MAX);
        assert!(verified.get(&format!("token-{}", Verified::MAX), 0).is_some(), "the newest is kept");
    }
}
