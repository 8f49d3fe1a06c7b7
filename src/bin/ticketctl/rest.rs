//! The REST side of ticketctl, for what only the REST API offers (the webhook subscriptions): the same bearer
//! token as the gRPC calls, the same exit statuses (`exit.rs`), and for an `https://` `--rest-addr` the same
//! `--ca`, `--cert` and `--key` (with `--ca` given, it is the only trust anchor, as for gRPC).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, Url};
use serde_json::Value;

use crate::exit::{coded, Coded, Exit};
use crate::Cli;

/// The REST port beside the gRPC one (the service's default `HTTP_PORT`), when `--rest-addr` is not given.
const DEFAULT_REST_PORT: u16 = 8000;

/// A REST client of the service.
pub struct Rest {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

fn read(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| coded(Exit::Usage, format!("reading {flag} {}: {e}", path.display())))
}

impl Rest {
    pub fn new(cli: &Cli) -> anyhow::Result<Rest> {
        let usage = |m: String| coded(Exit::Usage, m);
        let base = match &cli.rest_addr {
            Some(given) => Url::parse(&crate::endpoint(given))
                .map_err(|e| usage(format!("--rest-addr {given:?} is not a URL or host:port: {e}")))?,
            None => {
                let addr = &cli.addr;
                let mut url = Url::parse(&crate::endpoint(addr))
                    .map_err(|e| usage(format!("--addr {addr:?} is not a URL or host:port: {e}")))?;
                url.set_port(Some(DEFAULT_REST_PORT))
                    .map_err(|()| usage(format!("--addr {addr:?} has no host to take the REST address from")))?;
                url.set_path("");
                url
            }
        };
        let given = base.as_str();
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(usage(format!("--rest-addr {given:?} is not an http:// or https:// URL")));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            // An answer is the service's own: a redirect would send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ticketctl/", env!("CARGO_PKG_VERSION")));
        if base.scheme() == "https" {
            if let Some(ca) = &cli.ca {
                let certs = reqwest::Certificate::from_pem_bundle(&read("--ca", ca)?)
                    .map_err(|e| usage(format!("--ca {}: {e}", ca.display())))?;
                builder = builder.tls_built_in_root_certs(false);
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
            }
            if let (Some(cert), Some(key)) = (&cli.cert, &cli.key) {
                let mut pem = read("--cert", cert)?;
                pem.push(b'\n');
                pem.extend(read("--key", key)?);
                let identity =
                    reqwest::Identity::from_pem(&pem).map_err(|e| usage(format!("--cert and --key: {e}")))?;
                builder = builder.identity(identity);
            }
        }
        let http = builder.build().context("building the HTTP client")?;
        let token = cli.token.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
        Ok(Rest { http, base, token })
    }

    /// The URL of `segments` under the base (each segment escaped: an id is never read as a path or query).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("checked in new: a base URL").pop_if_empty().extend(segments);
        url
    }

    /// One call: the answer's JSON when it is a success (`Null` for an empty body), else an error with the
    /// exit status of its HTTP status and the service's `detail`.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = self.url(segments);
        let what = format!("{method} {}", url.path());
        let mut req = self.http.request(method, url);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.map_err(|e| {
            let exit = if e.is_builder() { Exit::Usage } else { Exit::Unavailable };
            let message = format!("{what}: no answer from {}", self.base);
            anyhow::Error::new(e).context(Coded { exit, message })
        })?;
        let status = res.status();
        let text = res.text().await.with_context(|| format!("{what}: reading the answer"))?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).with_context(|| format!("{what}: the answer is not JSON"));
        }
        // The service's errors are `{"detail": …}`; a proxy's may be anything.
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| crate::output::shorten(text.trim(), 200));
        let hint = if status == 401 && self.token.is_none() { " (no token: --token or TICKETCTL_TOKEN)" } else { "" };
        let message = format!("{what}: HTTP {status}: {detail}{hint}");
        Err(match Exit::of_http(status.as_u16()) {
            Some(exit) => coded(exit, message),
            None => anyhow::anyhow!(message),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Rest;
    use crate::Cli;

    fn base(args: &[&str]) -> String {
        let cli = Cli::parse_from([&["ticketctl"], args, &["webhooks", "list"]].concat());
        Rest::new(&cli).unwrap().base.to_string()
    }

    #[test]
    fn the_rest_address_follows_the_grpc_one_unless_given() {
        assert_eq!(base(&[]), "http://127.0.0.1:8000/");
        assert_eq!(base(&["--addr", "https://tickets.prod:50052"]), "https://tickets.prod:8000/", "never in clear");
        assert_eq!(base(&["--addr", "10.0.0.7:50052"]), "http://10.0.0.7:8000/");
        assert_eq!(base(&["--addr", "https://a:1", "--rest-addr", "b:9000"]), "http://b:9000/");
    }
}
