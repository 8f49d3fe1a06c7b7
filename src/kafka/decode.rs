//! Message payload → create request, decided per message: the Confluent wire format (byte 0, a 4-byte
//! big-endian schema id, an Avro datum) or JSON. The Avro writer schema comes from the schema registry when
//! `KAFKA_SCHEMA_REGISTRY_URL` is set (cached by id), else it is the bundled `execution-ticket.avsc`; the
//! datum is resolved against the bundled schema (Avro schema resolution) and mapped to the same
//! [`NewTicket`] every other entry point uses.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use actors::validation::NewTicket;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

/// The schema the orchestrator writes `execution.tickets` with (a copy of the shared contract).
pub const BUNDLED_SCHEMA: &str = include_str!("../../proto/execution-ticket.avsc");

static READER: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(BUNDLED_SCHEMA).expect("the bundled execution-ticket.avsc parses"));

/// The reader of datums written with the bundled schema: no resolution (writer and reader schema are one).
/// Built once — building one resolves every name of both schemas, several times the cost of reading a ticket.
static BUNDLED: LazyLock<GenericDatumReader<'static>> =
    LazyLock::new(|| GenericDatumReader::builder(&READER).build().expect("the bundled execution-ticket.avsc resolves"));

/// A reader of datums written with `writer`, resolved against the bundled schema.
type WriterReader = GenericDatumReader<'static>;

/// Why a payload is not a ticket.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Poison: no retry will help (DLQ).
    #[error("{0}")]
    Invalid(String),
    /// The schema registry could not be asked: retry later, never DLQ.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
}

/// Readers of writer schemas by id, fetched once from the registry.
#[derive(Clone)]
pub struct Decoder {
    registry: Option<Registry>,
}

#[derive(Clone)]
struct Registry {
    url: String,
    http: reqwest::Client,
    schemas: Arc<RwLock<HashMap<u32, Arc<WriterReader>>>>,
}

impl Decoder {
    pub fn new(registry_url: Option<String>) -> Self {
        let registry = registry_url.map(|url| Registry {
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("an HTTP client with default settings builds"),
            schemas: Arc::default(),
        });
        Decoder { registry }
    }

    /// Decode one payload (`None`: a tombstone).
    pub async fn decode(&self, payload: Option<&[u8]>) -> Result<NewTicket, DecodeError> {
        let payload = payload.ok_or_else(|| DecodeError::Invalid("empty message (no payload)".into()))?;
        match payload {
            [0, a, b, c, d, datum @ ..] => {
                let id = u32::from_be_bytes([*a, *b, *c, *d]);
                match &self.registry {
                    Some(r) => read_avro(&*r.schema(id).await?, datum),
                    None => read_avro(&BUNDLED, datum),
                }
            }
            _ => decode_json(payload),
        }
    }
}

impl Registry {
    /// The reader for writer schema `id`. Its schema is kept for the life of the process (a reader borrows
    /// it; a registry holds a handful of versions of a topic's schema).
    async fn schema(&self, id: u32) -> Result<Arc<WriterReader>, DecodeError> {
        if let Some(s) = self.schemas.read().expect("not poisoned").get(&id) {
            return Ok(Arc::clone(s));
        }
        let url = format!("{}/schemas/ids/{id}", self.url);
        let unavailable = |e: reqwest::Error| DecodeError::RegistryUnavailable(format!("GET {url}: {e}"));
        let res = self.http.get(&url).send().await.map_err(unavailable)?;
        if res.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(DecodeError::Invalid(format!("schema id {id} is unknown to the schema registry")));
        }
        if !res.status().is_success() {
            return Err(DecodeError::RegistryUnavailable(format!("GET {url}: HTTP {}", res.status())));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            schema: String,
        }
        let answer: Answer = res.json().await.map_err(unavailable)?;
        let schema = Schema::parse_str(&answer.schema)
            .map_err(|e| DecodeError::Invalid(format!("schema id {id} does not parse: {e}")))?;
        let mut schemas = self.schemas.write().expect("not poisoned");
        if let Some(reader) = schemas.get(&id) {
            return Ok(Arc::clone(reader)); // fetched meanwhile by another message
        }
        let schema: &'static Schema = Box::leak(Box::new(schema));
        let reader = GenericDatumReader::builder(schema)
            .reader_schema(&READER)
            .build()
            .map_err(|e| DecodeError::Invalid(format!("schema id {id} does not resolve: {e}")))?;
        let reader = Arc::new(reader);
        schemas.insert(id, Arc::clone(&reader));
        Ok(reader)
    }
}

/// An Avro datum written with the bundled schema.
pub fn decode_avro(datum: &[u8]) -> Result<NewTicket, DecodeError> {
    read_avro(&BUNDLED, datum)
}

/// An Avro datum read by `reader` (which resolves it to the bundled schema).
fn read_avro(reader: &GenericDatumReader<'_>, mut datum: &[u8]) -> Result<NewTicket, DecodeError> {
    let invalid = |e: apache_avro::Error| DecodeError::Invalid(format!("not an Avro execution ticket: {e}"));
    let value = reader.read_value(&mut datum).map_err(invalid)?;
    if !datum.is_empty() {
        return Err(DecodeError::Invalid(format!("{} bytes after the Avro datum", datum.len())));
    }
    let json = serde_json::Value::try_from(value)
        .map_err(|e| DecodeError::Invalid(format!("Avro value does not map to JSON: {e}")))?;
    serde_json::from_value(json).map_err(|e| DecodeError::Invalid(format!("Avro ticket does not map: {e}")))
}

/// A JSON ticket (the field names of the Avro schema).
pub fn decode_json(payload: &[u8]) -> Result<NewTicket, DecodeError> {
    // The common case first; only a failure pays for tracking the path to the offending field.
    if let Ok(ticket) = serde_json::from_slice(payload) {
        return Ok(ticket);
    }
    let de = &mut serde_json::Deserializer::from_slice(payload);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            DecodeError::Invalid(format!("not a JSON execution ticket: {inner}"))
        } else {
            DecodeError::Invalid(format!("not a JSON execution ticket: {path}: {inner}"))
        }
    })
}

/// Encode a ticket (as JSON fields) in the Confluent wire format with the bundled schema: the producer side,
/// for tests and the bench.
///
/// `metadata` values that are not strings are written as their JSON text (the schema's map holds strings; see
/// `actors::model::Metadata`).
pub fn encode_confluent(schema_id: u32, ticket: &serde_json::Value) -> anyhow::Result<Vec<u8>> {
    let mut ticket = ticket.clone();
    if let Some(serde_json::Value::Object(metadata)) = ticket.get_mut("metadata") {
        for v in metadata.values_mut().filter(|v| !v.is_string()) {
            *v = serde_json::Value::String(v.to_string());
        }
    }
    let value = avro_value(&ticket)
        .resolve(&READER)
        .map_err(|e| anyhow::anyhow!("ticket does not fit execution-ticket.avsc: {e}"))?;
    let mut out = vec![0];
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend(GenericDatumWriter::builder(&READER).build()?.write_value_to_vec(value)?);
    Ok(out)
}

/// JSON → generic Avro value (objects as maps, integers as longs); `resolve` then fits it to the schema.
fn avro_value(json: &serde_json::Value) -> apache_avro::types::Value {
    use apache_avro::types::Value;
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => n.as_i64().map(Value::Long).unwrap_or(Value::Double(n.as_f64().unwrap_or(0.0))),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(avro_value).collect()),
        serde_json::Value::Object(map) => Value::Map(map.iter().map(|(k, v)| (k.clone(), avro_value(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ticket() -> serde_json::Value {
        json!({
            "ticket_id": "t-1", "plan_id": "p", "intent_id": "i", "decision_id": "d",
            "correlation_id": null, "trace_id": null, "span_id": null,
            "task_id": "task", "task_type": "BUILD", "description": "build it", "dependencies": ["t-0"],
            "status": "PENDING", "priority": "HIGH", "risk_band": "low",
            "sla": {"deadline": 4_102_444_800_000_i64, "timeout_ms": 60_000, "max_retries": 2},
            "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
            "parameters": {"k": "v"}, "required_capabilities": ["rust"], "security_level": "INTERNAL",
            "created_at": 1_700_000_000_000_i64, "started_at": null, "completed_at": null,
            "estimated_duration_ms": null, "actual_duration_ms": null, "retry_count": 0,
            "error_message": null, "compensation_ticket_id": null, "metadata": {}, "schema_version": 1
        })
    }

    #[test]
    fn avro_round_trip_gives_the_same_request_as_json() {
        let bytes = encode_confluent(7, &ticket()).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 7]);
        let from_avro = decode_avro(&bytes[5..]).unwrap();
        let from_json = decode_json(ticket().to_string().as_bytes()).unwrap();
        let now = 1_700_000_000_000;
        let a = from_avro.validate(now, || unreachable!()).unwrap().ticket;
        let j = from_json.validate(now, || unreachable!()).unwrap().ticket;
        assert_eq!(a, j);
        assert_eq!(a.spec.dependencies, vec!["t-0".to_string()]);
    }

    /// A schema registry on loopback: `GET /schemas/ids/7` → the bundled schema, anything else → 404;
    /// counts the requests.
    async fn registry() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = vec![0; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let (status, body) = if request.starts_with("GET /schemas/ids/7 ") {
                    ("200 OK", json!({ "schema": BUNDLED_SCHEMA }).to_string())
                } else {
                    ("404 Not Found", r#"{"error_code":40403}"#.to_owned())
                };
                let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            }
        });
        (url, hits)
    }

    #[tokio::test]
    async fn writer_schemas_come_from_the_registry_once_per_id() {
        let (url, hits) = registry().await;
        let decoder = Decoder::new(Some(url));
        let bytes = encode_confluent(7, &ticket()).unwrap();
        for _ in 0..3 {
            let t = decoder.decode(Some(&bytes)).await.unwrap();
            assert_eq!(t.ticket_id.as_deref(), Some("t-1"));
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "the schema is fetched once, then cached");
        let unknown = encode_confluent(8, &ticket()).unwrap();
        assert!(matches!(decoder.decode(Some(&unknown)).await, Err(DecodeError::Invalid(_))), "unknown id is poison");
        let down = Decoder::new(Some("http://127.0.0.1:9".into()));
        assert!(
            matches!(down.decode(Some(&bytes)).await, Err(DecodeError::RegistryUnavailable(_))),
            "an unreachable registry is transient, not poison"
        );
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        for bad in [&b"\x00\x00\x00\x00\x07\xff\xff"[..], b"{not json", b"", b"\x00\x00"] {
            assert!(matches!(decode_json(bad).or_else(|_| decode_avro(bad)), Err(DecodeError::Invalid(_))));
        }
        let truncated = &encode_confluent(1, &ticket()).unwrap()[5..40];
        assert!(matches!(decode_avro(truncated), Err(DecodeError::Invalid(_))));
    }
}
