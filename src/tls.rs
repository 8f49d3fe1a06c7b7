//! TLS on the REST and gRPC listeners (issue #22): the server certificate and key (`TLS_CERT_FILE`,
//! `TLS_KEY_FILE`), client certificates verified against `TLS_CLIENT_CA_FILE` (mutual TLS), and the reload of all
//! three when their files change — SPIRE rotates X.509-SVIDs about hourly, and a restart per rotation is not
//! acceptable.
//!
//! Each listener gets one rustls [`ServerConfig`] for its whole life (actix-web takes a fixed one); what changes
//! lives behind it: the certificate is chosen per handshake by `CurrentCert`, and client certificates are
//! verified by `CurrentClientCa`, which delegates to a verifier built from the CA file last loaded. A poller
//! thread reads the files every `TLS_RELOAD_INTERVAL_MS` and swaps both when their bytes changed and they load:
//! new connections use the new certificate, open ones keep theirs. Files that do not load (a rotation caught
//! half-written: a certificate whose key has not been replaced yet) keep the previous ones, and are tried again
//! on the next poll.
//!
//! No CA names are hinted to clients in the CertificateRequest (the verifier changes under a fixed config):
//! clients with one certificate (tonic, reqwest, Go, curl, SPIRE helpers) send it anyway.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ClientCertPolicy, TlsSettings};

/// Why the TLS files could not be used. Each names the file (and the variable it came from).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{var} {path}: {source}")]
    Read { var: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{var} {path} holds no PEM certificate")]
    NoCertificate { var: &'static str, path: PathBuf },
    #[error("{var} {path}: not a PEM file: {detail}")]
    Pem { var: &'static str, path: PathBuf, detail: String },
    #[error("TLS_KEY_FILE {path} holds no usable private key: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("TLS_KEY_FILE does not match the certificate of TLS_CERT_FILE: {0}")]
    Mismatch(String),
    #[error("TLS_CLIENT_CA_FILE {path}: {detail}")]
    ClientCa { path: PathBuf, detail: String },
}

/// Who is at the other end of a TLS connection, from its verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    /// The certificate's one `spiffe://` URI SAN (an X.509-SVID has exactly one URI SAN; a certificate with
    /// several has none here).
    pub spiffe_id: Option<String>,
    /// The certificate's notAfter, Unix seconds: a principal it proves is good until then.
    pub not_after: Option<i64>,
}

impl PeerIdentity {
    /// The identity in a verified end-entity certificate (DER); None when it does not parse.
    pub fn from_certificate(der: &[u8]) -> Option<PeerIdentity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let uris: Vec<&str> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let spiffe_id = match uris.as_slice() {
            [one] if one.starts_with("spiffe://") => Some((*one).to_owned()),
            _ => None,
        };
        Some(PeerIdentity { spiffe_id, not_after: Some(cert.validity().not_after.timestamp()) })
    }

    /// The identity of a connection's peer certificates (the first is the end entity), if it sent any.
    pub fn from_peer_certificates(certs: Option<&[CertificateDer<'_>]>) -> Option<PeerIdentity> {
        certs.and_then(<[_]>::first).and_then(|c| PeerIdentity::from_certificate(c))
    }
}

fn read(var: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { var, path: path.to_owned(), source })
}

fn certificates(var: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem {
        var,
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { var, path: path.to_owned() });
    }
    Ok(certs)
}

/// The files as last read: a poll compares bytes, not modification times (a Kubernetes Secret or the SPIRE CSI
/// driver swaps a symlink, which keeps the old times).
#[derive(PartialEq, Eq)]
struct Snapshot {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// What a snapshot loads into.
struct Loaded {
    cert: Arc<CertifiedKey>,
    client: Option<Arc<dyn ClientCertVerifier>>,
}

fn read_files(s: &TlsSettings) -> Result<Snapshot, TlsError> {
    Ok(Snapshot {
        cert: read("TLS_CERT_FILE", &s.cert_file)?,
        key: read("TLS_KEY_FILE", &s.key_file)?,
        client_ca: s.client_ca_file.as_deref().map(|p| read("TLS_CLIENT_CA_FILE", p)).transpose()?,
    })
}

fn load(s: &TlsSettings, files: &Snapshot) -> Result<Loaded, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    let chain = certificates("TLS_CERT_FILE", &s.cert_file, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|e| TlsError::Key { path: s.key_file.clone(), detail: e.to_string() })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key { path: s.key_file.clone(), detail: e.to_string() })?;
    let cert = CertifiedKey::new(chain, key);
    cert.keys_match().map_err(|e| TlsError::Mismatch(e.to_string()))?;
    let client = match (&s.client_ca_file, &files.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("TLS_CLIENT_CA_FILE", path, pem)? {
                roots.add(ca).map_err(|e| TlsError::ClientCa { path: path.clone(), detail: e.to_string() })?;
            }
            // Whether a certificate is required is the listener's choice (`CurrentClientCa::mandatory`).
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider))
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa { path: path.clone(), detail: e.to_string() })?;
            Some(verifier)
        }
        _ => None,
    };
    Ok(Loaded { cert: Arc::new(cert), client })
}

/// The certificate handshakes present now.
#[derive(Debug)]
struct CurrentCert(Arc<Shared>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.cert.read().unwrap_or_else(|e| e.into_inner())))
    }
}

/// Client certificates verified against the CA file last loaded; required or optional per listener.
#[derive(Debug)]
struct CurrentClientCa {
    shared: Arc<Shared>,
    mandatory: bool,
}

impl CurrentClientCa {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        let client = self.shared.client.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(client.as_ref().expect("a client CA verifier is only installed with a client CA"))
    }
}

impl ClientCertVerifier for CurrentClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

#[derive(Debug)]
struct Shared {
    cert: RwLock<Arc<CertifiedKey>>,
    client: RwLock<Option<Arc<dyn ClientCertVerifier>>>,
}

/// The TLS material of the service, reloaded while it runs. Dropping the last clone stops the poller.
#[derive(Clone)]
pub struct Tls {
    shared: Arc<Shared>,
    settings: TlsSettings,
}

/// Outcomes of reloads (`tls_reloads_total{outcome}`): `reloaded`, `failed`.
pub type ReloadCounter = prometheus::IntCounterVec;

impl Tls {
    /// Load the files (errors name the variable and the file) and start polling them for changes.
    pub fn start(settings: &TlsSettings, reloads: ReloadCounter) -> Result<Tls, TlsError> {
        let mut last = read_files(settings)?;
        let loaded = load(settings, &last)?;
        let shared = Arc::new(Shared { cert: RwLock::new(loaded.cert), client: RwLock::new(loaded.client) });
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        let (s, interval) = (settings.clone(), settings.reload_interval);
        let spawned = std::thread::Builder::new().name("tls-reload".into()).spawn(move || loop {
            std::thread::sleep(interval);
            let Some(shared) = weak.upgrade() else { return };
            let files = match read_files(&s) {
                Ok(files) if files == last => continue,
                Ok(files) => files,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files unreadable: keeping the certificates loaded before");
                    reloads.with_label_values(&["failed"]).inc();
                    continue;
                }
            };
            match load(&s, &files) {
                Ok(loaded) => {
                    *shared.cert.write().unwrap_or_else(|e| e.into_inner()) = loaded.cert;
                    *shared.client.write().unwrap_or_else(|e| e.into_inner()) = loaded.client;
                    last = files;
                    reloads.with_label_values(&["reloaded"]).inc();
                    tracing::info!(cert_file = %s.cert_file.display(), "TLS certificates reloaded");
                }
                // Not remembered as seen: tried again at the next poll (the other file of the pair may be on its way).
                Err(e) => {
                    reloads.with_label_values(&["failed"]).inc();
                    tracing::warn!(error = %e, "TLS files changed but do not load: keeping the certificates loaded before");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the TLS reload thread: certificates will not be reloaded");
        }
        Ok(Tls { shared, settings: settings.clone() })
    }

    /// Whether client certificates are verified at all (TLS_CLIENT_CA_FILE).
    pub fn mutual(&self) -> bool {
        self.settings.client_ca_file.is_some()
    }

    fn config(&self, client_certificate_required: bool, alpn: &[&[u8]]) -> ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions");
        let resolver = Arc::new(CurrentCert(Arc::clone(&self.shared)));
        let mut config = if self.mutual() {
            let verifier = CurrentClientCa { shared: Arc::clone(&self.shared), mandatory: client_certificate_required };
            builder.with_client_cert_verifier(Arc::new(verifier)).with_cert_resolver(resolver)
        } else {
            builder.with_no_client_auth().with_cert_resolver(resolver)
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// The gRPC listener's config: HTTP/2 only; with mutual TLS a client certificate is required.
    pub fn grpc_config(&self) -> Arc<ServerConfig> {
        Arc::new(self.config(true, &[b"h2"]))
    }

    /// The REST listener's config (actix-web adds its ALPN protocols); with mutual TLS a client certificate is
    /// required only with `TLS_REST_CLIENT_CERT=required`.
    pub fn rest_config(&self) -> ServerConfig {
        self.config(self.settings.rest_client_cert == ClientCertPolicy::Required, &[])
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cert_file", &self.settings.cert_file).finish_non_exhaustive()
    }
}

/// How often the files are looked at by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
