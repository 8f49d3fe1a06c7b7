//! Authentication and authorization on both transports: service tokens (HS256 secret, RS256/ES256 JWKS),
//! ticket-scoped tokens limited to their ticket, and the tokens that must be refused.

use crate::common;

use common::{authed, fresh_store, spawn_app_with, ticket, TestApp, SERVICE_SECRET};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::json;
use ticket_supervisor::grpc::pb;
use tonic::Code;

const AUD: &str = "execution-ticket-service.neural-hive.local";

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn hs(secret: &str, claims: serde_json::Value) -> String {
    sign(Algorithm::HS256, None, &EncodingKey::from_secret(secret.as_bytes()), claims)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

async fn app() -> (TestApp, Option<tempfile::TempDir>) {
    let (store, dir) = fresh_store(false).await;
    let jwks = format!("{}/tests/fixtures/service-jwks.json", env!("CARGO_MANIFEST_DIR"));
    let app = spawn_app_with(&store, |s| s.auth.jwks_file = Some(jwks.into())).await;
    (app, dir)
}

async fn rest_status(app: &TestApp, method: Method, path: &str, token: Option<&str>) -> u16 {
    let mut req = app.client.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.json(&json!({"status": "RUNNING"})).send().await.unwrap().status().as_u16()
}

async fn grpc_get(app: &TestApp, id: &str, token: Option<&str>) -> Result<pb::GetTicketResponse, tonic::Status> {
    let msg = pb::GetTicketRequest { ticket_id: id.into() };
    let req = match token {
        Some(t) => authed(msg, t),
        None => tonic::Request::new(msg),
    };
    app.grpc().await.get_ticket(req).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn bad_tokens_are_refused_on_both_transports() {
    let (app, _dir) = app().await;
    app.post("/api/v1/tickets", &ticket("a-1")).await;
    let valid = json!({"sub": "orchestrator", "aud": AUD, "exp": now() + 60});
    let expired = hs(SERVICE_SECRET, json!({"sub": "orchestrator", "aud": AUD, "exp": now() - 3600}));
    let wrong_audience = hs(SERVICE_SECRET, json!({"sub": "orchestrator", "aud": "someone-else", "exp": now() + 60}));
    let wrong_secret = hs("not-the-secret", valid.clone());
    // alg "none": header {"alg":"none"}, the claims, and no signature.
    let b64 = |v: serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(valid.clone()));
    // HS/RS confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let public_pem = String::from_utf8(fixture("service-rs256.pub.pem")).unwrap();
    let confused = hs(&public_pem, valid.clone());

    let cases = [
        ("no token", None),
        ("garbage", Some("not-a-jwt")),
        ("expired", Some(expired.as_str())),
        ("wrong audience", Some(wrong_audience.as_str())),
        ("wrong secret", Some(wrong_secret.as_str())),
        ("alg none", Some(alg_none.as_str())),
        ("HS/RS key confusion", Some(confused.as_str())),
    ];
    for (what, token) in cases {
        let code = rest_status(&app, Method::GET, "/api/v1/tickets/a-1", token).await;
        assert_eq!(code, 401, "REST, {what}");
        let err = grpc_get(&app, "a-1", token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "gRPC, {what}: {err:?}");
    }
    let res = app.client.get(app.url("/api/v1/tickets")).send().await.unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    // Operational endpoints stay open.
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(app.client.get(app.url(path)).send().await.unwrap().status().as_u16(), 200, "{path}");
    }
}

#[tokio::test]
async fn jwks_service_tokens_verify() {
    let (app, _dir) = app().await;
    let claims = json!({"sub": "spiffe://neural-hive/orchestrator", "aud": AUD, "exp": now() + 60});
    let rsa = EncodingKey::from_rsa_pem(&fixture("service-rs256.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(&fixture("service-es256.pem")).unwrap();
    for token in [
        sign(Algorithm::RS256, Some("test-rsa"), &rsa, claims.clone()),
        sign(Algorithm::ES256, Some("test-ec"), &ec, claims.clone()),
        sign(Algorithm::RS256, None, &rsa, claims.clone()),
    ] {
        let res = app
            .client
            .post(app.url("/api/v1/tickets"))
            .bearer_auth(&token)
            .json(&ticket(&format!("j-{}", &token[token.len() - 8..])))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
    }
    let wrong_aud =
        sign(Algorithm::RS256, Some("test-rsa"), &rsa, json!({"sub": "x", "aud": "other", "exp": now() + 60}));
    assert_eq!(rest_status(&app, Method::GET, "/api/v1/tickets", Some(&wrong_aud)).await, 401);
}

#[tokio::test]
async fn ticket_tokens_reach_only_their_ticket() {
    let (app, _dir) = app().await;
    app.post("/api/v1/tickets", &ticket("mine")).await;
    app.post("/api/v1/tickets", &ticket("other")).await;
    let token = app.ticket_token("mine").await;

    // REST: read and update its own ticket; nothing else.
    assert_eq!(rest_status(&app, Method::GET, "/api/v1/tickets/mine", Some(&token)).await, 200);
    assert_eq!(rest_status(&app, Method::PATCH, "/api/v1/tickets/mine/status", Some(&token)).await, 200);
    assert_eq!(rest_status(&app, Method::GET, "/api/v1/tickets/other", Some(&token)).await, 403);
    assert_eq!(rest_status(&app, Method::PATCH, "/api/v1/tickets/other/status", Some(&token)).await, 403);
    assert_eq!(rest_status(&app, Method::GET, "/api/v1/tickets", Some(&token)).await, 403);
    assert_eq!(rest_status(&app, Method::GET, "/api/v1/tickets/mine/token", Some(&token)).await, 403);
    let res = app.client.post(app.url("/api/v1/tickets")).bearer_auth(&token).json(&ticket("x")).send().await;
    assert_eq!(res.unwrap().status().as_u16(), 403);

    // gRPC: the same rules.
    assert!(grpc_get(&app, "mine", Some(&token)).await.is_ok());
    assert_eq!(grpc_get(&app, "other", Some(&token)).await.unwrap_err().code(), Code::PermissionDenied);
    let mut client = app.grpc().await;
    let list = client.list_tickets(authed(pb::ListTicketsRequest::default(), &token)).await.unwrap_err();
    assert_eq!(list.code(), Code::PermissionDenied);
    let update =
        pb::UpdateTicketStatusRequest { ticket_id: "other".into(), status: "RUNNING".into(), ..Default::default() };
    assert_eq!(client.update_ticket_status(authed(update, &token)).await.unwrap_err().code(), Code::PermissionDenied);
    let update =
        pb::UpdateTicketStatusRequest { ticket_id: "mine".into(), status: "COMPLETED".into(), ..Default::default() };
    let done = client.update_ticket_status(authed(update, &token)).await.unwrap().into_inner().ticket.unwrap();
    assert_eq!(done.status, "COMPLETED");

    // The change is recorded as made by that token.
    let mut watch = client
        .watch_tickets(authed(
            pb::WatchTicketsRequest { ticket_ids: vec!["mine".into()], ..Default::default() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!((first.event_type.as_str(), first.ticket.unwrap().status.as_str()), ("snapshot", "COMPLETED"));
    let all = pb::WatchTicketsRequest::default();
    assert_eq!(client.watch_tickets(authed(all, &token)).await.unwrap_err().code(), Code::PermissionDenied);
}
