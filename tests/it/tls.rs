//! TLS and mutual TLS on the REST and gRPC ports (issue #22), with certificates generated here (rcgen): plaintext
//! refused, client certificates checked, SPIFFE IDs as principals, certificates reloaded without a restart.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{authed, proto_ticket, spawn_app_with, ticket, TestApp, SERVICE_SECRET};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use ticket_supervisor::config::{ClientCertPolicy, TlsSettings};
use ticket_supervisor::grpc::pb;
use ticket_supervisor::grpc::pb::ticket_service_client::TicketServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const ORCHESTRATOR: &str = "spiffe://neural-hive.local/ns/neural-hive-orchestration/sa/orchestrator-dynamic";
const STRANGER: &str = "spiffe://neural-hive.local/ns/other/sa/someone";

/// A certificate authority of a test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, PEM.
struct Pair {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { issuer: Issuer::new(params, key), pem }
    }

    /// The server's certificate: for 127.0.0.1 and localhost; `name` tells two of them apart.
    fn server(&self, name: &str) -> Pair {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, name);
        self.sign(params)
    }

    /// A client certificate with `spiffe_id` as its URI SAN (an X.509-SVID).
    fn client(&self, spiffe_id: &str) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(SanType::URI(spiffe_id.try_into().unwrap()));
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair { cert: cert.pem(), key: key.serialize_pem() }
    }
}

/// The service's TLS files in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(server: &Pair, client_ca: Option<&Ca>) -> Files {
        let files = Files { dir: tempfile::tempdir().unwrap() };
        files.write(server);
        if let Some(ca) = client_ca {
            std::fs::write(files.path("client-ca.pem"), &ca.pem).unwrap();
        }
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replace the certificate and key as a rotation does: each file written whole, then renamed into place.
    fn write(&self, server: &Pair) {
        for (name, text) in [("key.pem", &server.key), ("cert.pem", &server.cert)] {
            let tmp = self.path(&format!("{name}.new"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.path(name)).unwrap();
        }
    }

    fn settings(&self, mutual: bool) -> TlsSettings {
        TlsSettings {
            cert_file: self.path("cert.pem"),
            key_file: self.path("key.pem"),
            client_ca_file: mutual.then(|| self.path("client-ca.pem")),
            rest_client_cert: ClientCertPolicy::Optional,
            reload_interval: Duration::from_millis(100),
        }
    }
}

async fn tls_app(files: &Files, mutual: bool, spiffe_ids: &[&str]) -> (TestApp, tempfile::TempDir) {
    let (store, dir) = common::fresh_store(false).await;
    let tls = files.settings(mutual);
    let ids: Vec<String> = spiffe_ids.iter().map(|s| s.to_string()).collect();
    let app = spawn_app_with(&store, move |s| {
        s.tls = Some(tls);
        s.auth.spiffe_service_ids = ids;
    })
    .await;
    (app, dir.unwrap())
}

fn http_port(app: &TestApp) -> u16 {
    app.base.rsplit(':').next().unwrap().parse().unwrap()
}

/// A gRPC channel over TLS trusting `ca`, with `client` as its certificate.
async fn grpc_tls(app: &TestApp, ca: &Ca, client: Option<&Pair>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem));
    if let Some(pair) = client {
        tls = tls.identity(Identity::from_pem(&pair.cert, &pair.key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", app.grpc_port))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A REST client over TLS trusting `ca`, with `client` as its certificate.
fn rest_tls(ca: &Ca, client: Option<&Pair>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap());
    if let Some(pair) = client {
        let pem = format!("{}{}", pair.cert, pair.key);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn plaintext_is_refused_when_tls_is_on() {
    let ca = Ca::new("server ca");
    let files = Files::new(&ca.server("server-1"), None);
    let (app, _dir) = tls_app(&files, false, &[]).await;
    let port = http_port(&app);

    let plain = reqwest::get(format!("http://127.0.0.1:{port}/api/v1/tickets/x")).await;
    assert!(plain.is_err(), "plaintext REST must not be served: {plain:?}");
    let grpc = TicketServiceClient::connect(format!("http://127.0.0.1:{}", app.grpc_port)).await;
    let refused = match grpc {
        Err(_) => true,
        Ok(mut c) => c.get_ticket(authed(pb::GetTicketRequest { ticket_id: "x".into() }, &app.token)).await.is_err(),
    };
    assert!(refused, "plaintext gRPC must not be served");

    // Over TLS both answer; the bearer token still decides.
    let client = rest_tls(&ca, None);
    let res = client.get(format!("https://127.0.0.1:{port}/api/v1/tickets/x")).bearer_auth(&app.token).send();
    assert_eq!(res.await.unwrap().status(), 404);
    let res = client.get(format!("https://127.0.0.1:{port}/api/v1/tickets/x")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let mut grpc = TicketServiceClient::new(grpc_tls(&app, &ca, None).await.expect("TLS without mTLS"));
    let err = grpc.get_ticket(authed(pb::GetTicketRequest { ticket_id: "x".into() }, &app.token)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // The metrics port stays plaintext (probes and scrapes).
    for path in ["/metrics", "/health", "/ready"] {
        let res = reqwest::get(format!("{}{path}", app.metrics_base)).await.unwrap();
        assert_eq!(res.status(), 200, "{path} on the metrics port");
    }
}

/// gRPC under mutual TLS: no certificate, or one from another CA, fails the handshake; the right one connects.
#[tokio::test]
async fn mutual_tls_wants_a_client_certificate_from_the_ca() {
    let (server_ca, client_ca, other_ca) = (Ca::new("server ca"), Ca::new("client ca"), Ca::new("other ca"));
    let files = Files::new(&server_ca.server("server-1"), Some(&client_ca));
    let (app, _dir) = tls_app(&files, true, &[]).await;
    let get = || authed(pb::GetTicketRequest { ticket_id: "x".into() }, &app.token);

    async fn call(
        channel: Result<Channel, tonic::transport::Error>,
        req: tonic::Request<pb::GetTicketRequest>,
    ) -> Result<(), tonic::Status> {
        match channel {
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            Ok(c) => TicketServiceClient::new(c).get_ticket(req).await.map(|_| ()),
        }
    }
    // With TLS 1.3 the client learns of the refusal (an alert) on its first call: a transport error, never an
    // answer of the service. Which one depends on whether the alert or the closed connection is read first:
    // UNAVAILABLE / UNKNOWN, or CANCELLED ("connection closed", seen once in a full run).
    let transport = [tonic::Code::Unavailable, tonic::Code::Unknown, tonic::Code::Cancelled];
    let none = call(grpc_tls(&app, &server_ca, None).await, get()).await.unwrap_err();
    assert!(transport.contains(&none.code()), "no client certificate: {none:?}");
    let foreign = other_ca.client(ORCHESTRATOR);
    let foreign = call(grpc_tls(&app, &server_ca, Some(&foreign)).await, get()).await.unwrap_err();
    assert!(transport.contains(&foreign.code()), "a certificate of another CA: {foreign:?}");
    let right = client_ca.client(STRANGER);
    let ok = call(grpc_tls(&app, &server_ca, Some(&right)).await, get()).await.unwrap_err();
    assert_eq!(ok.code(), tonic::Code::NotFound, "the right certificate (and a token) gets an answer: {ok:?}");

    // REST: a certificate is optional (TLS_REST_CLIENT_CERT=optional), but one from another CA is refused.
    let url = format!("https://127.0.0.1:{}/api/v1/tickets/x", http_port(&app));
    let res = rest_tls(&server_ca, None).get(&url).bearer_auth(&app.token).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let res = rest_tls(&server_ca, Some(&other_ca.client(ORCHESTRATOR))).get(&url).bearer_auth(&app.token).send().await;
    assert!(res.is_err(), "a REST client certificate from another CA must fail the handshake: {res:?}");
}

/// A client certificate whose SPIFFE ID SERVICE_SPIFFE_IDS maps to the service role is the orchestrator without
/// a token; an unmapped one is not; a token sent with a mapped certificate must name the same principal.
#[tokio::test]
async fn a_mapped_spiffe_id_is_the_service_role() {
    let (server_ca, client_ca) = (Ca::new("server ca"), Ca::new("spire ca"));
    let files = Files::new(&server_ca.server("server-1"), Some(&client_ca));
    let (app, _dir) = tls_app(&files, true, &[ORCHESTRATOR]).await;
    let orchestrator = client_ca.client(ORCHESTRATOR);
    let stranger = client_ca.client(STRANGER);

    // gRPC, no bearer token.
    let mut grpc = TicketServiceClient::new(grpc_tls(&app, &server_ca, Some(&orchestrator)).await.unwrap());
    let created = grpc
        .create_ticket(pb::CreateTicketRequest { ticket: Some(proto_ticket("svid-1")) })
        .await
        .expect("the mapped SPIFFE ID creates without a token")
        .into_inner();
    assert!(created.created);
    let history =
        grpc.get_ticket_history(pb::GetTicketHistoryRequest { ticket_id: "svid-1".into(), ..Default::default() });
    let history = history.await.unwrap().into_inner();
    assert_eq!(history.entries[0].actor, ORCHESTRATOR, "the SPIFFE ID is the author of the change");

    let mut unmapped = TicketServiceClient::new(grpc_tls(&app, &server_ca, Some(&stranger)).await.unwrap());
    let err =
        unmapped.create_ticket(pb::CreateTicketRequest { ticket: Some(proto_ticket("svid-2")) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("not mapped"), "{}", err.message());
    // An unmapped certificate with a valid token: the token decides.
    let req = authed(pb::CreateTicketRequest { ticket: Some(proto_ticket("svid-2")) }, &app.token);
    assert!(unmapped.create_ticket(req).await.unwrap().into_inner().created);

    // A mapped certificate with a token naming someone else is refused; with a JWT of the same principal, not.
    let req = authed(pb::CreateTicketRequest { ticket: Some(proto_ticket("svid-3")) }, &app.token);
    let err = grpc.create_ticket(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let same =
        ticket_supervisor::auth::token::service_token(SERVICE_SECRET, &app.settings.auth, ORCHESTRATOR, 600).unwrap();
    let req = authed(pb::CreateTicketRequest { ticket: Some(proto_ticket("svid-3")) }, &same);
    assert!(grpc.create_ticket(req).await.unwrap().into_inner().created);

    // REST, the same rules.
    let url = format!("https://127.0.0.1:{}/api/v1/tickets", http_port(&app));
    let res = rest_tls(&server_ca, Some(&orchestrator)).post(&url).json(&ticket("svid-4")).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let res = rest_tls(&server_ca, Some(&stranger)).post(&url).json(&ticket("svid-5")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = rest_tls(&server_ca, Some(&orchestrator)).post(&url).json(&ticket("svid-5")).bearer_auth(&app.token);
    assert_eq!(res.send().await.unwrap().status(), 401, "a token naming another principal");
}

/// The server's certificate is replaced on disk: the next connection gets the new one, no restart; a
/// connection opened before goes on.
#[tokio::test]
async fn rotated_certificates_are_used_without_a_restart() {
    let (old_ca, new_ca) = (Ca::new("old ca"), Ca::new("new ca"));
    let files = Files::new(&old_ca.server("server-1"), None);
    let (app, _dir) = tls_app(&files, false, &[]).await;
    let get = || authed(pb::GetTicketRequest { ticket_id: "x".into() }, &app.token);
    let mut before = TicketServiceClient::new(grpc_tls(&app, &old_ca, None).await.unwrap());
    assert_eq!(before.get_ticket(get()).await.unwrap_err().code(), tonic::Code::NotFound);
    assert!(grpc_tls(&app, &new_ca, None).await.is_err(), "the new CA does not know the old certificate");

    files.write(&new_ca.server("server-2"));
    common::eventually("the new certificate is presented", 10, || async {
        grpc_tls(&app, &new_ca, None).await.is_ok()
    })
    .await;
    assert!(grpc_tls(&app, &old_ca, None).await.is_err(), "new connections get the new certificate");
    let url = format!("https://127.0.0.1:{}/api/v1/tickets/x", http_port(&app));
    let res = rest_tls(&new_ca, None).get(&url).bearer_auth(&app.token).send().await.unwrap();
    assert_eq!(res.status(), 404, "REST presents the new certificate too");
    assert_eq!(
        before.get_ticket(get()).await.unwrap_err().code(),
        tonic::Code::NotFound,
        "the open connection goes on"
    );

    // A half-written rotation (a key that does not match) keeps the certificate that works.
    let other = new_ca.server("server-3");
    std::fs::write(files.path("key.pem"), &other.key).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(grpc_tls(&app, &new_ca, None).await.is_ok(), "a mismatched pair is not loaded");
    let metrics = reqwest::get(format!("{}/metrics", app.metrics_base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tls_reloads_total{outcome=\"reloaded\"} 1"), "{metrics}");
    assert!(metrics.contains("tls_reloads_total{outcome=\"failed\"}"), "{metrics}");
}

/// Bad TLS configuration stops the start, naming the variable.
#[tokio::test]
async fn unusable_tls_files_are_refused_at_startup() {
    let ca = Ca::new("server ca");
    let files = Files::new(&ca.server("server-1"), None);
    std::fs::write(files.path("key.pem"), "not a key").unwrap();
    let (store, _dir) = common::fresh_store(false).await;
    let tls = files.settings(false);
    let err = common::try_spawn_app_with(&store, move |s| s.tls = Some(tls)).await.err().expect("refused");
    assert!(err.contains("TLS_KEY_FILE"), "{err}");
    let tls = TlsSettings { cert_file: Path::new("/nonexistent/cert.pem").into(), ..files.settings(false) };
    let err = common::try_spawn_app_with(&store, move |s| s.tls = Some(tls)).await.err().expect("refused");
    assert!(err.contains("TLS_CERT_FILE"), "{err}");
}

/// Cluster mode with mutual TLS: two replicas on one database forward to each other over TLS, each presenting
/// its certificate, so every request is served whichever replica it reaches.
#[tokio::test]
async fn replicas_forward_to_each_other_over_mutual_tls() {
    let ca = Ca::new("cluster CA");
    let files = Files::new(&ca.server("replica"), Some(&ca));
    let (store, _) = common::fresh_store(true).await;
    let start = || {
        let tls = files.settings(true);
        spawn_app_with(&store, move |s| {
            s.tls = Some(tls);
            s.cluster.secret = Some("cluster-secret".into());
            s.cluster.lease_ttl = Duration::from_secs(3);
            s.cluster.renew_every = Duration::from_millis(500);
        })
    };
    let (a, b) = (start().await, start().await);
    let owned = |app: &TestApp| {
        let url = format!("{}/metrics", app.metrics_base);
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            let line = text.lines().find(|l| l.starts_with("cluster_shards_owned ")).unwrap().to_owned();
            line.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
        }
    };
    common::eventually("both replicas own shards", 20, || async { owned(&a).await > 0.0 && owned(&b).await > 0.0 })
        .await;
    let client = rest_tls(&ca, None);
    let token = format!("Bearer {}", a.token);
    for i in 0..16 {
        let id = format!("mtls-{i}");
        let (via, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let url = |app: &TestApp, path: &str| format!("https://localhost:{}{path}", http_port(app));
        let res = client.post(url(via, "/api/v1/tickets")).header("authorization", &token).json(&ticket(&id));
        assert_eq!(res.send().await.unwrap().status(), 201);
        let res = client.get(url(other, &format!("/api/v1/tickets/{id}"))).header("authorization", &token);
        assert_eq!(res.send().await.unwrap().status(), 200);
    }
    let text = reqwest::get(format!("{}/metrics", a.metrics_base)).await.unwrap().text().await.unwrap();
    let forwarded: f64 = text
        .lines()
        .find(|l| l.starts_with("cluster_forwarded_requests_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(forwarded > 0.0, "some requests went to the other replica, over TLS");
}
