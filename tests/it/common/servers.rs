//! Real servers a test starts for itself on a free loopback port (so it can stop and restart them): the tansu
//! Kafka broker (TANSU_BIN) and the nx-27017 MongoDB wire-protocol server (NX_27017_BIN), both provided by
//! scripts/test.sh. Each is killed when its handle is dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn binary(var: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run the tests with scripts/test.sh (it provides the servers)"))
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tansu broker (memory storage: a restarted broker starts empty, without topics).
pub struct Kafka {
    pub port: u16,
    proc: Option<Proc>,
}

impl Kafka {
    /// The service's settings to consume `topic` from this broker as consumer group `group` (DLQ
    /// `<topic>.dlq`, a consumer-group join in ~3 s, no event publication).
    pub fn consumer_settings(&self, topic: &str, group: &str) -> ticket_supervisor::config::KafkaSettings {
        ticket_supervisor::config::KafkaSettings {
            bootstrap_servers: self.bootstrap(),
            group_id: group.into(),
            topic: topic.into(),
            dlq_topic: format!("{topic}.dlq"),
            auto_offset_reset: "earliest".into(),
            schema_registry_url: None,
            client_properties: Vec::new(),
            session_timeout_ms: Some(6000),
            max_poll_interval_ms: Some(7000),
            max_in_flight: 1024,
            events: None,
        }
    }

    pub fn start() -> Kafka {
        let mut kafka = Kafka { port: free_port(), proc: None };
        kafka.resume();
        kafka
    }

    /// Kill the broker (as a crash would); its messages and topics are gone with it.
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Start a new, empty broker on the same port.
    pub fn resume(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(binary("TANSU_BIN"))
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.proc = Some(Proc(child));
        wait_for_port(self.port, "tansu");
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin.create_topics([&topic], &AdminOptions::new()).await.expect("create topic");
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
    }

    pub fn producer(&self) -> FutureProducer {
        self.config().set("message.timeout.ms", "10000").create().unwrap()
    }

    /// Produce one message (and wait for the broker's acknowledgement).
    pub async fn produce(&self, producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        });
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("produce");
    }

    /// Every message of `topic` (read from the beginning by a fresh group) until `n` arrived or `timeout`.
    pub fn read_all(&self, topic: &str, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
        let consumer = self.reader(topic);
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                out.push(m.detach());
            }
        }
        out
    }

    /// A consumer of `topic` from its beginning, in a group of its own.
    fn reader(&self, topic: &str) -> BaseConsumer {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("max.poll.interval.ms", "7000")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        consumer
    }

    /// Every message of `topic` until `n` arrived (or `timeout`), and then whatever else arrives within `linger`:
    /// a test expecting exactly `n` sees a duplicate or an extra one, without betting on how long the group
    /// join takes (about 3 s with these settings).
    pub fn read_expecting(&self, topic: &str, n: usize, timeout: Duration, linger: Duration) -> Vec<OwnedMessage> {
        let consumer = self.reader(topic);
        let mut out = Vec::new();
        let mut deadline = Instant::now() + timeout;
        let mut lingering = false;
        while Instant::now() < deadline {
            if !lingering && out.len() >= n {
                lingering = true;
                deadline = Instant::now() + linger;
            }
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                out.push(m.detach());
            }
        }
        out
    }

    /// The offset `group` has committed on partition 0 of `topic` (None: nothing committed).
    pub fn committed(&self, group: &str, topic: &str) -> Option<i64> {
        let consumer: BaseConsumer = self.config().set("group.id", group).create().unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
        match committed.elements().first()?.offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        }
    }
}

/// The value of header `key` of a message, as text.
pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = m.headers()?;
    headers.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// An nx-27017 server over a SQLite file, so that it can be stopped and started again with its data.
pub struct Mongo {
    pub port: u16,
    db: PathBuf,
    dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl Mongo {
    pub fn start() -> Mongo {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mongo { port: free_port(), db: dir.path().join("mongo.db"), dir, proc: None };
        m.resume();
        m
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=2000&connectTimeoutMS=2000", self.port)
    }

    /// Kill the server (as a crash would).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Start it again on the same port and file.
    pub fn resume(&mut self) {
        let d = self.dir.path();
        let child = Command::new(binary("NX_27017_BIN"))
            .arg("--db")
            .arg(&self.db)
            .args(["-p", &self.port.to_string()])
            .arg("--log-file")
            .arg(d.join("nx.log"))
            .arg("--pid-file")
            .arg(d.join("nx.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nx-27017");
        self.proc = Some(Proc(child));
        wait_for_port(self.port, "nx-27017");
    }
}
