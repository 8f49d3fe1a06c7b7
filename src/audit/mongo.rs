//! The MongoDB audit sink: one document per audit record, `_id` = `event_id`, so shipping a batch twice (a
//! crash between shipping and marking it shipped) stores each record once.

use actors::history::AuditEvent;
use actors::outbox_sink::{OutboxSink, SinkError};
use anyhow::Context as _;
use async_trait::async_trait;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, InsertManyError};
use mongodb::options::ClientOptions;
use mongodb::{Collection, IndexModel};
use prometheus::IntCounterVec;

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// See the module docs.
pub struct MongoAuditSink {
    collection: Collection<Document>,
    ops: IntCounterVec,
}

impl MongoAuditSink {
    /// Connect lazily (the driver reconnects by itself) and create the indexes once the server answers; a
    /// server that is down at startup only delays shipping, it does not stop the service.
    pub async fn connect(uri: &str, database: &str, collection: &str, ops: IntCounterVec) -> anyhow::Result<Self> {
        let mut options = ClientOptions::parse(uri).await.context("MONGODB_URI is not a MongoDB URI")?;
        options.app_name.get_or_insert_with(|| "execution-ticket-service".into());
        options.server_selection_timeout.get_or_insert(std::time::Duration::from_secs(5));
        let client = mongodb::Client::with_options(options).context("creating the MongoDB client")?;
        let collection = client.database(database).collection::<Document>(collection);
        let sink = MongoAuditSink { collection, ops };
        let indexes = sink.collection.clone();
        let ops = sink.ops.clone();
        tokio::spawn(async move {
            let model = IndexModel::builder().keys(doc! { "ticket_id": 1, "at": 1 }).build();
            loop {
                match indexes.create_index(model.clone()).await {
                    Ok(_) => {
                        ops.with_label_values(&["create_index", "ok"]).inc();
                        break;
                    }
                    Err(e) => {
                        ops.with_label_values(&["create_index", "error"]).inc();
                        tracing::warn!(error = %e, "could not create the audit index yet; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                }
            }
        });
        Ok(sink)
    }

    fn document(e: &AuditEvent) -> Document {
        let details = mongodb::bson::to_bson(&e.details).unwrap_or(Bson::Null);
        doc! {
            "_id": &e.event_id,
            "event_id": &e.event_id,
            "ticket_id": &e.ticket_id,
            "kind": &e.kind,
            "from_status": e.from_status.as_deref(),
            "to_status": e.to_status.as_deref(),
            "version": e.version,
            "actor": &e.actor,
            "at": e.at,
            "timestamp": mongodb::bson::DateTime::from_millis(e.at),
            "details": details,
            "traceparent": e.traceparent.as_deref(),
        }
    }
}

/// Only duplicate keys: every document of the batch is stored (some by an earlier attempt).
fn only_duplicates(e: &InsertManyError) -> bool {
    e.write_concern_error.is_none()
        && e.write_errors.as_ref().is_some_and(|errors| errors.iter().all(|w| w.code == DUPLICATE_KEY))
}

#[async_trait]
impl OutboxSink for MongoAuditSink {
    async fn ship(&self, events: &[AuditEvent]) -> Result<usize, SinkError> {
        let docs: Vec<Document> = events.iter().map(Self::document).collect();
        let result = self.collection.insert_many(docs).ordered(false).await;
        match result {
            Ok(_) => {
                self.ops.with_label_values(&["insert_many", "ok"]).inc();
                Ok(events.len())
            }
            Err(e) if matches!(e.kind.as_ref(), ErrorKind::InsertMany(im) if only_duplicates(im)) => {
                self.ops.with_label_values(&["insert_many", "ok"]).inc();
                Ok(events.len())
            }
            Err(e) => {
                self.ops.with_label_values(&["insert_many", "error"]).inc();
                Err(SinkError(e.to_string()))
            }
        }
    }

    fn name(&self) -> &'static str {
        "mongodb"
    }
}
