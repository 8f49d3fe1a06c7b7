//! Span export over OTLP/HTTP, end to end: the application runs with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing
//! at a collector stand-in in this test (a plain TCP listener that decodes each `POST /v1/traces`), and the
//! spans of a REST create, a gRPC call and a consumed Kafka message (tansu, from scripts/test.sh) must
//! arrive, each in the trace of its `traceparent`; and the Kafka message's trace must go on through the ticket
//! actor, the PostgreSQL commit (a linked span) and the webhook attempt to the receiver's `traceparent`, and be
//! kept in the ticket's audit history. (`--nocapture` prints that trace.)
//!
//! The OpenTelemetry layer is process-global, so this file holds one test.
//!
//! It is a test binary of its own, not a module of `tests/it` (the one binary of every other integration
//! test), because it needs a process of its own: `telemetry::init_with_otlp` installs the process-global
//! tracing subscriber (with the OTLP layer) and sets the global tracer provider and propagator, and turns span
//! export on for the whole process (`otel::enabled`). Beside the other tests it would either find the plain
//! subscriber `common::spawn_app` installs already there (and export nothing: this test fails), or, when it ran
//! first, make every later test's application create and propagate spans (a `traceparent` on their webhooks
//! and Kafka events) that they never asked for.

// The shared helpers of tests/it.
#[path = "it/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::servers::Kafka;
use common::{authed, ticket};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use prost::Message as _;
use ticket_supervisor::grpc::pb;

/// One exported span, as the collector saw it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    /// (trace id, span id) of each linked span.
    links: Vec<(String, String)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(kv: &[KeyValue]) -> HashMap<String, String> {
    let value = |v: &Value| match v {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    };
    kv.iter().filter_map(|kv| Some((kv.key.clone(), value(kv.value.as_ref()?.value.as_ref()?)))).collect()
}

/// A collector stand-in: HTTP/1.1 over a std listener, every request answered 200.
struct Collector {
    port: u16,
    spans: Arc<Mutex<Vec<Received>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (spans, paths) = (Arc::<Mutex<Vec<Received>>>::default(), Arc::<Mutex<Vec<String>>>::default());
        let (s, p) = (Arc::clone(&spans), Arc::clone(&paths));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, p) = (Arc::clone(&s), Arc::clone(&p));
                std::thread::spawn(move || {
                    let _ = serve(stream, &s, &p);
                });
            }
        });
        Collector { port, spans, paths }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 request: "METHOD PATH", lower-cased headers, body; None when the connection closed.
type Request = (String, HashMap<String, String>, Vec<u8>);

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(None);
    }
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some((request_line.split_whitespace().take(2).collect::<Vec<_>>().join(" "), headers, body)))
}

/// The headers of every request a receiver got.
type ReceivedHeaders = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// A webhook receiver (every request answered 204).
fn webhook_receiver() -> (u16, ReceivedHeaders) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = ReceivedHeaders::default();
    let g = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let g = Arc::clone(&g);
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut writer = stream.try_clone()?;
                let mut reader = BufReader::new(stream);
                while let Some((_, headers, _)) = read_request(&mut reader)? {
                    g.lock().unwrap().push(headers);
                    writer.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")?;
                }
                Ok(())
            });
        }
    });
    (port, got)
}

/// Requests of one keep-alive connection, until it closes.
fn serve(stream: TcpStream, spans: &Mutex<Vec<Received>>, paths: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some((request_line, _, body)) = read_request(&mut reader)? {
        paths.lock().unwrap().push(request_line);
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP protobuf trace export");
        for resource_spans in request.resource_spans {
            let resource = text(&resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.lock().unwrap().push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: text(&span.attributes),
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                });
            }
        }
        writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")?;
    }
    Ok(())
}

const REST_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REST_PARENT: &str = "00f067aa0ba902b7";
const GRPC_TRACE: &str = "5b8efff798038103d269b633813fc60c";
const GRPC_PARENT: &str = "eee19b7ec3c1b174";
/// What `servers::Kafka::produce` puts in every message's `traceparent` header.
const KAFKA_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const KAFKA_PARENT: &str = "b7ad6b7169203331";

#[tokio::test]
async fn rest_grpc_and_kafka_spans_reach_the_collector_in_the_callers_trace() {
    let collector = Collector::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let export = ticket_supervisor::telemetry::init_with_otlp("error", Some(&endpoint))
        .expect("OTLP export starts")
        .expect("this test installs the process's subscriber");
    let export = Arc::new(export);
    let kafka = Kafka::start();
    kafka.create_topic("tickets-otel", 1).await;
    kafka.create_topic("tickets-otel.dlq", 1).await;
    let (store, _dir) = common::fresh_store(true).await;
    let app = common::spawn_app_with(&store, |s| {
        s.otel_endpoint = Some(endpoint.clone());
        s.kafka = Some(kafka.consumer_settings("tickets-otel", "svc-otel"));
        s.webhooks.allowed_networks = "127.0.0.0/8".into();
    })
    .await;
    let (receiver_port, received) = webhook_receiver();
    let subscription = serde_json::json!({
        "url": format!("http://127.0.0.1:{receiver_port}/hook"), "events": ["ticket.created"],
    });
    let subscribed = app.req(reqwest::Method::POST, "/api/v1/webhooks").json(&subscription).send().await.unwrap();
    assert_eq!(subscribed.status().as_u16(), 201);

    let created = app
        .req(reqwest::Method::POST, "/api/v1/tickets")
        .header("traceparent", format!("00-{REST_TRACE}-{REST_PARENT}-01"))
        .header("x-request-id", "req-otel-1")
        .json(&ticket("otel-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    assert_eq!(created.headers()["x-request-id"], "req-otel-1", "the caller's request id comes back");
    assert_eq!(app.get("/api/v1/tickets/otel-1").await.0, 200, "no traceparent: a trace of its own");
    let mut grpc = app.grpc().await;
    let mut call = authed(pb::GetTicketRequest { ticket_id: "otel-1".into() }, &app.token);
    call.metadata_mut().insert("traceparent", format!("00-{GRPC_TRACE}-{GRPC_PARENT}-01").parse().unwrap());
    grpc.get_ticket(call).await.unwrap();
    let json = serde_json::to_vec(&ticket("otel-k1")).unwrap();
    kafka.produce(&kafka.producer(), "tickets-otel", "otel-k1", &json).await;

    // The root spans end just after their responses are sent: flush until all of them arrived.
    let find = |name: &str| collector.spans().into_iter().find(|s| s.name == name);
    let names = [
        "POST /api/v1/tickets",
        "GET /api/v1/tickets/{ticket_id}",
        "ticket_service.TicketService/GetTicket",
        "tickets-otel process",
        "ticket.handle",
        "store.commit",
        "webhook.send",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while names.iter().any(|n| find(n).is_none()) {
        assert!(Instant::now() < deadline, "spans missing; received: {:#?}", collector.spans());
        let export = Arc::clone(&export);
        let _ = tokio::task::spawn_blocking(move || export.flush()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(collector.paths.lock().unwrap().iter().all(|p| p == "POST /v1/traces"), "the OTLP/HTTP traces path");

    let create = find(names[0]).unwrap();
    assert_eq!(create.service, "execution-ticket-service");
    assert_eq!((create.trace_id.as_str(), create.parent_span_id.as_str()), (REST_TRACE, REST_PARENT));
    assert_eq!(create.attributes.get("ticket_id").map(String::as_str), Some("otel-1"), "{create:?}");
    assert_eq!(create.attributes.get("http.status_code").map(String::as_str), Some("201"), "{create:?}");
    assert_eq!(create.attributes.get("request_id").map(String::as_str), Some("req-otel-1"), "in the trace");

    let get = find(names[1]).unwrap();
    assert!(get.trace_id != REST_TRACE && get.trace_id != GRPC_TRACE && get.parent_span_id.is_empty(), "{get:?}");
    assert_eq!(get.attributes.get("ticket_id").map(String::as_str), Some("otel-1"), "from the route");

    let rpc = find(names[2]).unwrap();
    assert_eq!(rpc.trace_id, GRPC_TRACE, "{rpc:?}");
    assert_eq!(rpc.parent_span_id, GRPC_PARENT);
    assert_eq!(rpc.attributes.get("ticket_id").map(String::as_str), Some("otel-1"), "{rpc:?}");
    assert_eq!(rpc.attributes.get("rpc.grpc.status_code").map(String::as_str), Some("0"), "{rpc:?}");

    let consumed = find(names[3]).unwrap();
    assert_eq!((consumed.trace_id.as_str(), consumed.parent_span_id.as_str()), (KAFKA_TRACE, KAFKA_PARENT));
    assert_eq!(consumed.attributes.get("ticket_id").map(String::as_str), Some("otel-k1"), "{consumed:?}");
    assert_eq!(consumed.attributes.get("messaging.system").map(String::as_str), Some("kafka"));

    // The Kafka message's trace, on through the actor, the commit and the webhook to the receiver.
    let spans = collector.spans();
    let of_k1 = |name: &str| {
        spans.iter().find(|s| s.name == name && s.attributes.get("ticket_id").map(String::as_str) == Some("otel-k1"))
    };
    let handled = of_k1("ticket.handle").unwrap_or_else(|| panic!("no ticket.handle span for otel-k1: {spans:#?}"));
    assert_eq!((handled.trace_id.as_str(), handled.parent_span_id.as_str()), (KAFKA_TRACE, consumed.span_id.as_str()));
    assert_eq!(handled.attributes.get("request").map(String::as_str), Some("create"), "{handled:?}");
    assert_eq!(handled.attributes.get("plan_id").map(String::as_str), Some("plan-1"), "{handled:?}");
    assert_eq!(handled.attributes.get("intent_id").map(String::as_str), Some("intent-1"), "{handled:?}");
    let link = (KAFKA_TRACE.to_owned(), handled.span_id.clone());
    assert!(
        spans.iter().any(|s| s.name == "store.commit" && s.links.contains(&link)),
        "a commit span linked to the actor's: {spans:#?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let sent = loop {
        let spans = collector.spans();
        let sent = spans
            .into_iter()
            .find(|s| s.name == "webhook.send" && s.attributes.get("ticket_id").map(String::as_str) == Some("otel-k1"));
        if let Some(sent) = sent {
            break sent;
        }
        assert!(Instant::now() < deadline, "no webhook.send span for otel-k1");
        let export = Arc::clone(&export);
        let _ = tokio::task::spawn_blocking(move || export.flush()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((sent.trace_id.as_str(), sent.parent_span_id.as_str()), (KAFKA_TRACE, handled.span_id.as_str()));
    let headers =
        received.lock().unwrap().iter().find(|h| h.get("x-ticket-id").map(String::as_str) == Some("otel-k1")).cloned();
    let headers = headers.expect("the receiver got otel-k1's ticket.created");
    assert_eq!(
        headers["traceparent"],
        format!("00-{KAFKA_TRACE}-{}-01", sent.span_id),
        "the receiver joins the attempt's span"
    );
    println!("the trace of otel-k1 (Kafka → actor → PostgreSQL → webhook):");
    println!("  producer            trace {KAFKA_TRACE} span {KAFKA_PARENT}");
    for s in [&consumed, handled, &sent] {
        println!("  {:<19} trace {} span {} parent {}", s.name, s.trace_id, s.span_id, s.parent_span_id);
    }
    let commit = spans.iter().find(|s| s.name == "store.commit" && s.links.contains(&link)).expect("checked above");
    println!("  {:<19} trace {} span {} links {:?}", commit.name, commit.trace_id, commit.span_id, commit.links);
    println!("  receiver got        traceparent {}", headers["traceparent"]);
    let (status, history) = app.get("/api/v1/tickets/otel-k1/history").await;
    assert_eq!(status, 200);
    let created = &history["events"][0];
    assert_eq!(created["kind"], "ticket.created");
    assert_eq!(created["traceparent"], format!("00-{KAFKA_TRACE}-{}-01", handled.span_id), "{history}");
}
