//! `/docs`: the API reference, Swagger UI over `/openapi.json`.
//!
//! Swagger UI's files come from the `utoipa-swagger-ui` crate with its `vendored` feature: the distribution is
//! inside the crate (no download at build time, none at run time) and embedded in the binary. The page itself
//! and its start script are ours: the crate's `index.html` loads its files by relative paths, which would
//! resolve against `/` on `/docs` (paths lose their trailing slash here, see `http::app`), and its initializer
//! is an inline script.

use std::sync::{Arc, LazyLock};

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use utoipa_swagger_ui::Config;

const INDEX: &str = include_str!("docs/index.html");
const INIT: &str = include_str!("docs/init.js");

/// Only the distribution's static files are served from it (not its templated initializer).
const DIST_FILES: [&str; 4] =
    ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png"];

static CONFIG: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| Arc::new(Config::from("/openapi.json")));

/// Only this origin's scripts; inline styles, which Swagger UI sets; no framing. The page reads the console's
/// token from the tab's session storage, so it gets the console's protections.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn secured(res: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    super::console::with_policy(res, CSP)
}

/// GET /docs.
async fn index() -> HttpResponse {
    secured(HttpResponse::Ok()).content_type("text/html; charset=utf-8").body(INDEX)
}

/// GET /docs/{file}: the start script, or a file of the Swagger UI distribution.
async fn file(path: web::Path<String>) -> HttpResponse {
    let name = path.into_inner();
    if name == "init.js" {
        return secured(HttpResponse::Ok()).content_type("text/javascript; charset=utf-8").body(INIT);
    }
    if !DIST_FILES.contains(&name.as_str()) {
        return super::console::not_found();
    }
    match utoipa_swagger_ui::serve(&name, Arc::clone(&CONFIG)) {
        Ok(Some(f)) => secured(HttpResponse::Ok())
            .content_type(f.content_type)
            // The files change only with the binary.
            .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
            .body(f.bytes.into_owned()),
        Ok(None) => super::console::not_found(),
        Err(e) => {
            tracing::error!(error = %e, file = %name, "a Swagger UI file could not be served");
            HttpResponse::InternalServerError().finish()
        }
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/docs", web::get().to(index)).route("/docs/{file}", web::get().to(file));
}
