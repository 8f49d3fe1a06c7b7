//! `/console`: the operator console, a page and a few small ES modules embedded in the binary.
//!
//! Nothing here reads or changes tickets: the page signs in with a bearer token kept in the tab's session
//! storage and every call it makes is an ordinary authenticated API call, so it can do nothing the API would
//! refuse. No cookies, so no CSRF to guard against. The files are plain hand-written HTML, CSS and JavaScript
//! (no build step); the content security policy lets the page run only its own scripts and reach only this
//! origin, and the scripts build the page with `textContent` (never HTML from data).

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::errors::ErrorBody;

/// Every file of the console: its name under `/console/assets/`, content type and bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("console.css", "text/css; charset=utf-8", include_str!("console/console.css")),
    ("app.js", JS, include_str!("console/app.js")),
    ("api.js", JS, include_str!("console/api.js")),
    ("ui.js", JS, include_str!("console/ui.js")),
    ("tickets.js", JS, include_str!("console/tickets.js")),
    ("ticket.js", JS, include_str!("console/ticket.js")),
    ("plans.js", JS, include_str!("console/plans.js")),
    ("risk.js", JS, include_str!("console/risk.js")),
    ("webhooks.js", JS, include_str!("console/webhooks.js")),
    ("system.js", JS, include_str!("console/system.js")),
];
const JS: &str = "text/javascript; charset=utf-8";
const INDEX: &str = include_str!("console/index.html");

/// Only this origin, only its own scripts and styles; no framing (clickjacking of the action buttons).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn secured(res: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    let mut res = with_policy(res, CSP);
    // A new binary may bring new files under the same names.
    res.insert_header((header::CACHE_CONTROL, "no-cache"));
    res
}

/// The headers of a page that holds the caller's token (the console, `/docs`): its content security policy, no
/// type sniffing, no referrer.
pub(super) fn with_policy(
    mut res: actix_web::HttpResponseBuilder,
    csp: &'static str,
) -> actix_web::HttpResponseBuilder {
    res.insert_header((header::CONTENT_SECURITY_POLICY, csp))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    res
}

/// The API's 404, for names that are not files of the console or of /docs.
pub(super) fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(ErrorBody { detail: "Not Found".into() })
}

/// GET /console (and `/`): the page. Its views live after `#` (`/console#/tickets/…`), so one URL serves all.
async fn index() -> HttpResponse {
    secured(HttpResponse::Ok()).content_type("text/html; charset=utf-8").body(INDEX)
}

/// GET /console/assets/{file}.
async fn asset(path: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(name, _, _)| *name == path.as_str()) {
        Some((_, content_type, body)) => secured(HttpResponse::Ok()).content_type(*content_type).body(*body),
        None => not_found(),
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/console", web::get().to(index))
        .route("/console/assets/{file}", web::get().to(asset))
        // The service's root leads people to the console.
        .route(
            "/",
            web::get().to(|| async { HttpResponse::Found().insert_header((header::LOCATION, "/console")).finish() }),
        );
}
