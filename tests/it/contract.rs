//! The OpenAPI contract: every operation the served `/openapi.json` documents is called on a real service, for
//! its success and its usual failures, and every answer is checked against the document — its status must be
//! one the operation declares, and its body must validate against the declared schema (JSON Schema 2020-12,
//! with the document's components), or be empty where the document declares no body. A client generated from
//! the document then never meets an answer it cannot read. The test also fails when the document gains an
//! operation this test does not call, so the contract grows with the API.

use crate::common;
use crate::on_both_stores;
use crate::webhook_support;

use std::collections::BTreeSet;

use common::{eventually, fresh_store, spawn_app_with, ticket, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use webhook_support::{Reply, ScriptedReceiver};

on_both_stores!(every_answer_matches_the_openapi_document);

/// Who calls.
enum As<'a> {
    Service,
    Anonymous,
    Bearer(&'a str),
}

struct Contract<'a> {
    app: &'a TestApp,
    doc: Value,
    /// `METHOD template` of every operation called.
    called: BTreeSet<String>,
    /// Every mismatch, reported together at the end.
    problems: Vec<String>,
}

impl<'a> Contract<'a> {
    async fn new(app: &'a TestApp) -> Contract<'a> {
        let (code, doc) = app.get("/openapi.json").await;
        assert_eq!(code, 200, "{doc}");
        Contract { app, doc, called: BTreeSet::new(), problems: Vec::new() }
    }

    /// Call `method template` (with `{name}` parameters filled from `args`) and check the answer against the
    /// document. Returns the status and the body (JSON, or the text as a string).
    async fn call(
        &mut self,
        method: Method,
        template: &str,
        args: &[(&str, &str)],
        body: Option<&Value>,
        who: As<'_>,
        extra: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut path = template.to_owned();
        for (name, value) in args {
            path = path.replace(&format!("{{{name}}}"), value);
        }
        let mut req = self.app.client.request(method.clone(), self.app.url(&path));
        req = match who {
            As::Service => req.bearer_auth(&self.app.token),
            As::Anonymous => req,
            As::Bearer(token) => req.bearer_auth(token),
        };
        for (name, value) in extra {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let mut res = req.send().await.expect("the service answers");
        let status = res.status().as_u16();
        let media = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let media = media.split(';').next().unwrap_or("").trim().to_owned();
        let text = if media == "text/event-stream" {
            // A stream does not end: read until its first event arrived (or 5 s passed).
            let mut text = String::new();
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while !text.contains("\ndata:") || !text.ends_with("\n\n") {
                match tokio::time::timeout_at(until, res.chunk()).await {
                    Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
                    _ => break,
                }
            }
            text
        } else {
            res.text().await.unwrap()
        };
        let key = template.split('?').next().unwrap();
        let op_name = format!("{} {key}", method.as_str());
        self.called.insert(op_name.clone());
        let answer = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
        self.check(&op_name, key, &method, status, &media, &text);
        (status, answer)
    }

    fn check(&mut self, op_name: &str, key: &str, method: &Method, status: u16, media: &str, text: &str) {
        let op = &self.doc["paths"][key][method.as_str().to_lowercase()];
        if !op.is_object() {
            self.problems.push(format!("{op_name}: not in the document"));
            return;
        }
        let Some(response) = op["responses"].get(status.to_string()).or_else(|| op["responses"].get("default")) else {
            self.problems.push(format!("{op_name}: answered {status}, which the document does not declare: {text}"));
            return;
        };
        let Some(content) = response["content"].as_object().filter(|c| !c.is_empty()) else {
            if !text.is_empty() {
                self.problems
                    .push(format!("{op_name} {status}: the document declares no body, the answer has one: {text}"));
            }
            return;
        };
        let Some(schema) = content.get(media).map(|c| &c["schema"]) else {
            let declared: Vec<&String> = content.keys().collect();
            self.problems.push(format!("{op_name} {status}: answered {media:?}, declared {declared:?}: {text}"));
            return;
        };
        // JSON: the body; a server-sent event stream: the data of each event but the closing `error` one.
        let instances: Vec<&str> = if media == "text/event-stream" {
            let events: Vec<&str> = text
                .split("\n\n")
                .filter(|frame| !frame.lines().any(|l| l == "event: error"))
                .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
                .collect();
            if events.is_empty() {
                self.problems.push(format!("{op_name} {status}: no event arrived: {text:?}"));
            }
            events
        } else {
            vec![text]
        };
        // The schema, with the document's components beside it so its `#/components/...` references resolve.
        let mut root = schema.clone();
        root["components"] = self.doc["components"].clone();
        let validator = match jsonschema::options().with_draft(jsonschema::Draft::Draft202012).build(&root) {
            Ok(v) => v,
            Err(e) => {
                self.problems.push(format!("{op_name} {status}: the document's schema does not compile: {e}"));
                return;
            }
        };
        for instance in instances {
            let Ok(value) = serde_json::from_str::<Value>(instance) else {
                self.problems.push(format!("{op_name} {status}: not JSON: {instance}"));
                continue;
            };
            let errors: Vec<String> =
                validator.iter_errors(&value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
            if !errors.is_empty() {
                self.problems.push(format!("{op_name} {status}: {}\n    answer: {instance}", errors.join("; ")));
            }
        }
    }

    /// Every operation the document lists was called, and nothing was off.
    fn finish(self) {
        let mut problems = self.problems;
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys().filter(|m| *m != "parameters") {
                let name = format!("{} {path}", method.to_uppercase());
                if !self.called.contains(&name) {
                    problems.push(format!("{name}: documented, but this test never calls it"));
                }
            }
        }
        assert!(problems.is_empty(), "{} contract problem(s):\n{}", problems.len(), problems.join("\n"));
    }
}

async fn every_answer_matches_the_openapi_document(pg: bool) {
    let rx = ScriptedReceiver::start().await;
    rx.always("/hook", Reply::status(500));
    let (store, _dir) = fresh_store(pg).await;
    let app = spawn_app_with(&store, |s| {
        s.webhooks.allowed_networks = "127.0.0.0/8".into();
        s.webhooks.schedule = [100].into_iter().map(std::time::Duration::from_millis).collect();
    })
    .await;
    let mut c = Contract::new(&app).await;
    let none: &[(&str, &str)] = &[];
    use As::{Anonymous, Service};

    c.call(Method::GET, "/health", none, None, Anonymous, none).await;
    c.call(Method::GET, "/ready", none, None, Anonymous, none).await;

    // Webhooks first, so the tickets below make deliveries.
    const HOOKS: &str = "/api/v1/webhooks";
    let sub_body = json!({"url": rx.url("/hook"), "events": ["ticket.created"], "description": "contract"});
    let (code, sub) = c.call(Method::POST, HOOKS, none, Some(&sub_body), Service, none).await;
    assert_eq!(code, 201, "{sub}");
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let sub_args = [("id", sub_id.as_str())];
    let missing = [("id", "wh_missing")];
    assert_eq!(c.call(Method::POST, HOOKS, none, Some(&json!({"url": "ftp://x"})), Service, none).await.0, 422);
    assert_eq!(c.call(Method::POST, HOOKS, none, Some(&sub_body), Anonymous, none).await.0, 401);
    assert_eq!(c.call(Method::GET, HOOKS, none, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, "/api/v1/webhooks/event-types", none, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, "/api/v1/webhooks/{id}", &sub_args, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, "/api/v1/webhooks/{id}", &missing, None, Service, none).await.0, 404);
    let patch = json!({"description": "contract, renamed"});
    assert_eq!(c.call(Method::PATCH, "/api/v1/webhooks/{id}", &sub_args, Some(&patch), Service, none).await.0, 200);
    let bad = json!({"url": "not a url"});
    assert_eq!(c.call(Method::PATCH, "/api/v1/webhooks/{id}", &sub_args, Some(&bad), Service, none).await.0, 422);
    assert_eq!(c.call(Method::PATCH, "/api/v1/webhooks/{id}", &missing, Some(&patch), Service, none).await.0, 404);
    let rotate = "/api/v1/webhooks/{id}/rotate-secret";
    assert_eq!(c.call(Method::POST, rotate, &sub_args, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::POST, rotate, &missing, None, Service, none).await.0, 404);

    // Tickets.
    const TICKETS: &str = "/api/v1/tickets";
    const ONE: &str = "/api/v1/tickets/{ticket_id}";
    let (code, body) = c.call(Method::POST, TICKETS, none, Some(&ticket("ct-1")), Service, none).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(c.call(Method::POST, TICKETS, none, Some(&ticket("ct-1")), Service, none).await.0, 200);
    let mut changed = ticket("ct-1");
    changed["description"] = json!("something else");
    assert_eq!(c.call(Method::POST, TICKETS, none, Some(&changed), Service, none).await.0, 409);
    assert_eq!(c.call(Method::POST, TICKETS, none, Some(&json!({"ticket_id": 7})), Service, none).await.0, 422);
    assert_eq!(c.call(Method::POST, TICKETS, none, Some(&ticket("ct-x")), Anonymous, none).await.0, 401);
    let mut dependent = ticket("ct-2");
    dependent["dependencies"] = json!(["ct-1"]);
    assert_eq!(c.call(Method::POST, TICKETS, none, Some(&dependent), Service, none).await.0, 201);
    let token = app.ticket_token("ct-1").await;
    let own = As::Bearer(&token);
    assert_eq!(c.call(Method::POST, TICKETS, none, Some(&ticket("ct-y")), own, none).await.0, 403);

    let list = "/api/v1/tickets?plan_id=plan-1&status=PENDING&limit=10";
    assert_eq!(c.call(Method::GET, list, none, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, "/api/v1/tickets?limit=-1", none, None, Service, none).await.0, 422);
    assert_eq!(c.call(Method::GET, TICKETS, none, None, As::Bearer(&token), none).await.0, 403);
    let by_plans = "/api/v1/tickets/by-plans";
    let plans = json!({"plan_ids": ["plan-1", "plan-2"]});
    assert_eq!(c.call(Method::POST, by_plans, none, Some(&plans), Service, none).await.0, 200);
    assert_eq!(c.call(Method::POST, by_plans, none, Some(&json!({"plan_ids": 1})), Service, none).await.0, 422);

    let t1 = [("ticket_id", "ct-1")];
    let t2 = [("ticket_id", "ct-2")];
    let gone = [("ticket_id", "ct-missing")];
    assert_eq!(c.call(Method::GET, ONE, &t1, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, ONE, &t1, None, As::Bearer(&token), none).await.0, 200);
    assert_eq!(c.call(Method::GET, ONE, &t2, None, As::Bearer(&token), none).await.0, 403);
    assert_eq!(c.call(Method::GET, ONE, &gone, None, Service, none).await.0, 404);
    assert_eq!(c.call(Method::GET, ONE, &t1, None, Anonymous, none).await.0, 401);

    const STATUS: &str = "/api/v1/tickets/{ticket_id}/status";
    let running = json!({"status": "RUNNING"});
    let stale = [("if-match", "\"999\"")];
    assert_eq!(c.call(Method::PATCH, STATUS, &t1, Some(&running), Service, &stale).await.0, 412);
    assert_eq!(c.call(Method::PATCH, STATUS, &t1, Some(&running), Service, none).await.0, 200);
    let skip = json!({"status": "COMPENSATED"});
    assert_eq!(c.call(Method::PATCH, STATUS, &t2, Some(&skip), Service, none).await.0, 409, "not from PENDING");
    let bogus = json!({"status": "SLEEPING"});
    assert_eq!(c.call(Method::PATCH, STATUS, &t1, Some(&bogus), Service, none).await.0, 422);
    assert_eq!(c.call(Method::PATCH, STATUS, &gone, Some(&running), Service, none).await.0, 404);
    // The original service's route for the same change.
    assert_eq!(c.call(Method::PATCH, ONE, &t1, Some(&skip), Service, none).await.0, 409);

    const RETRY: &str = "/api/v1/tickets/{ticket_id}/retry";
    assert_eq!(c.call(Method::POST, RETRY, &t2, None, Service, none).await.0, 409, "a PENDING ticket");
    assert_eq!(c.call(Method::POST, RETRY, &gone, None, Service, none).await.0, 404);
    let failed = json!({"status": "FAILED", "error_message": "the node went away"});
    assert_eq!(c.call(Method::PATCH, STATUS, &t2, Some(&json!({"status": "RUNNING"})), Service, none).await.0, 200);
    assert_eq!(c.call(Method::PATCH, STATUS, &t2, Some(&failed), Service, none).await.0, 200);
    assert_eq!(c.call(Method::POST, RETRY, &t2, None, Service, none).await.0, 200);

    const COMPENSATE: &str = "/api/v1/tickets/compensation";
    let comp = json!({"original_ticket_id": "ct-1", "reason": "rolled back"});
    assert_eq!(c.call(Method::POST, COMPENSATE, none, Some(&comp), Service, none).await.0, 201);
    assert_eq!(c.call(Method::POST, COMPENSATE, none, Some(&comp), Service, none).await.0, 200);
    let on_pending = json!({"original_ticket_id": "ct-2", "reason": "nothing ran"});
    assert_eq!(c.call(Method::POST, COMPENSATE, none, Some(&on_pending), Service, none).await.0, 409);
    let on_missing = json!({"original_ticket_id": "ct-missing", "reason": "r"});
    assert_eq!(c.call(Method::POST, COMPENSATE, none, Some(&on_missing), Service, none).await.0, 404);
    assert_eq!(c.call(Method::POST, COMPENSATE, none, Some(&json!({})), Service, none).await.0, 422);

    const TOKEN: &str = "/api/v1/tickets/{ticket_id}/token";
    assert_eq!(c.call(Method::GET, TOKEN, &t2, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, TOKEN, &t1, None, Service, none).await.0, 403, "a COMPENSATING ticket");
    assert_eq!(c.call(Method::GET, TOKEN, &gone, None, Service, none).await.0, 404);
    assert_eq!(c.call(Method::POST, TOKEN, &t2, None, Service, none).await.0, 200);
    const HISTORY: &str = "/api/v1/tickets/{ticket_id}/history";
    assert_eq!(c.call(Method::GET, HISTORY, &t1, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, HISTORY, &gone, None, Service, none).await.0, 404);
    let bad_limit = "/api/v1/tickets/{ticket_id}/history?limit=nope";
    assert_eq!(c.call(Method::GET, bad_limit, &t1, None, Service, none).await.0, 422);
    const DEPENDENTS: &str = "/api/v1/tickets/{ticket_id}/dependents";
    assert_eq!(c.call(Method::GET, DEPENDENTS, &t1, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, DEPENDENTS, &gone, None, Service, none).await.0, 404);
    // Keyset pages, the id prefix and the at-risk order (the console's queries).
    let (code, page) = c.call(Method::GET, "/api/v1/tickets?cursor=&limit=1", none, None, Service, none).await;
    assert_eq!(code, 200, "{page}");
    let next = page["next_cursor"].as_str().expect("a next page").to_owned();
    let second = format!("/api/v1/tickets?limit=1&cursor={next}");
    assert_eq!(c.call(Method::GET, &second, none, None, Service, none).await.0, 200);
    let at_risk = "/api/v1/tickets?order=next_due&id_prefix=ct-";
    assert_eq!(c.call(Method::GET, at_risk, none, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, "/api/v1/tickets?cursor=%ZZ", none, None, Service, none).await.0, 422);
    // Who the token says the caller is; the service's own view of itself.
    assert_eq!(c.call(Method::GET, "/api/v1/me", none, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, "/api/v1/me", none, None, As::Bearer(&token), none).await.0, 200);
    assert_eq!(c.call(Method::GET, "/api/v1/me", none, None, Anonymous, none).await.0, 401);
    assert_eq!(c.call(Method::GET, "/api/v1/system", none, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, "/api/v1/system", none, None, As::Bearer(&token), none).await.0, 403);
    // The event stream: its snapshot events, and its refusals.
    const STREAM: &str = "/api/v1/events/stream";
    assert_eq!(c.call(Method::GET, "/api/v1/events/stream?ticket_id=ct-2", none, None, Service, none).await.0, 200);
    let own_stream = "/api/v1/events/stream?ticket_id=ct-1";
    assert_eq!(c.call(Method::GET, own_stream, none, None, As::Bearer(&token), none).await.0, 200);
    assert_eq!(c.call(Method::GET, STREAM, none, None, As::Bearer(&token), none).await.0, 403);
    assert_eq!(c.call(Method::GET, "/api/v1/events/stream?status=SLEEPING", none, None, Service, none).await.0, 422);
    const DEPENDENCIES: &str = "/api/v1/tickets/{ticket_id}/dependencies";
    assert_eq!(c.call(Method::GET, DEPENDENCIES, &t2, None, Service, none).await.0, 200);
    assert_eq!(c.call(Method::GET, DEPENDENCIES, &gone, None, Service, none).await.0, 404);

    // Deliveries of the subscription (ticket.created of ct-1 and ct-2, failing), a redelivery, then delete it.
    const DELIVERIES: &str = "/api/v1/webhooks/{id}/deliveries";
    eventually("a delivery attempted", 20, || async {
        let (_, page) = app.get(&format!("/api/v1/webhooks/{sub_id}/deliveries")).await;
        page["deliveries"].as_array().is_some_and(|d| d.iter().any(|d| d["attempts"].as_i64() >= Some(1)))
    })
    .await;
    let (code, page) = c.call(Method::GET, DELIVERIES, &sub_args, None, Service, none).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(c.call(Method::GET, DELIVERIES, &missing, None, Service, none).await.0, 404);
    let bad_page = "/api/v1/webhooks/{id}/deliveries?limit=many";
    assert_eq!(c.call(Method::GET, bad_page, &sub_args, None, Service, none).await.0, 422);
    let delivery = page["deliveries"][0]["id"].as_str().unwrap().to_owned();
    const REDELIVER: &str = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver";
    let one = [("id", sub_id.as_str()), ("delivery_id", delivery.as_str())];
    assert_eq!(c.call(Method::POST, REDELIVER, &one, None, Service, none).await.0, 202);
    let other = [("id", sub_id.as_str()), ("delivery_id", "dlv_missing")];
    assert_eq!(c.call(Method::POST, REDELIVER, &other, None, Service, none).await.0, 404);
    assert_eq!(c.call(Method::DELETE, "/api/v1/webhooks/{id}", &sub_args, None, Service, none).await.0, 204);
    assert_eq!(c.call(Method::DELETE, "/api/v1/webhooks/{id}", &sub_args, None, Service, none).await.0, 404);

    c.finish();
}
