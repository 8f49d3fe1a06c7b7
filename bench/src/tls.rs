//! `ticket-bench tls`: what TLS costs (issue #22). The same service binary on the same PostgreSQL server, first
//! plaintext then with TLS (a certificate generated for the run), each on a fresh database; GetTicket and
//! CreateTicket over gRPC from the same clients on a few keep-alive HTTP/2 connections, so the handshake is paid
//! once per connection and the figure is the cost of the encryption itself.
//!
//! `ticket-bench tls --database-url URL [--service PATH] [--seconds N] [--clients N] [--rounds N] [--append FILE]`

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use ticket_supervisor::grpc::pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::crud::{authed, closed_loop, errs, ticket, Client, Phase, RATE_LIMITS_OFF};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: crate::Target,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Plaintext-then-TLS pairs.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Append the report to this file (e.g. BENCHMARKS.md).
    #[arg(long)]
    append: Option<String>,
}

/// A CA and a server certificate for 127.0.0.1, written to `dir`: (CA PEM, cert path, key path).
fn certificates(dir: &std::path::Path) -> anyhow::Result<(String, String, String)> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "ticket-bench ca");
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_owned()])?;
    server.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse()?));
    let cert = server.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((ca_pem, cert_path.display().to_string(), key_path.display().to_string()))
}

/// Creates then GetTicket of what was created, on one service run: (creates, reads).
async fn measure(a: &Args, tls: Option<(&str, &str, &str)>) -> anyhow::Result<(Phase, Phase)> {
    let (_, url) = crate::fresh_database(&a.target.database_url, "bench_tls").await?;
    let mut env: Vec<(&str, &str)> = RATE_LIMITS_OFF.to_vec();
    if let Some((_, cert, key)) = tls {
        env.extend([("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", key)]);
    }
    let mut svc = crate::start_service(&a.target.service, &url, &env)?;
    let port = svc.grpc_port.context("the service logged no gRPC port")?;
    let token: Arc<str> = crate::service_token("bench")?.into();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let endpoint = match tls {
            None => Channel::from_shared(format!("http://127.0.0.1:{port}"))?,
            Some((ca, _, _)) => Channel::from_shared(format!("https://127.0.0.1:{port}"))?
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?,
        };
        clients.push(Client::new(endpoint.tcp_nodelay(true).connect().await?));
    }
    let label = if tls.is_some() { "TLS" } else { "plaintext" };
    let run = crate::now_ms();
    let t = token.clone();
    let creates = closed_loop(format!("{label} create"), &clients, a.clients, a.seconds, move |mut cl, w, i| {
        let token = t.clone();
        async move {
            let req = pb::CreateTicketRequest { ticket: Some(ticket(format!("tls-{run}-{w}-{i}"))) };
            cl.create_ticket(authed(req, &token)).await?;
            anyhow::Ok(true)
        }
    })
    .await;
    // Reads of tickets that exist (the first 1000 of each caller's creates).
    let reads = closed_loop(format!("{label} get"), &clients, a.clients, a.seconds, move |mut cl, w, i| {
        let token = token.clone();
        async move {
            let req = pb::GetTicketRequest { ticket_id: format!("tls-{run}-{w}-{}", i % 1000) };
            match cl.get_ticket(authed(req, &token)).await {
                Ok(_) => anyhow::Ok(true),
                Err(s) if s.code() == tonic::Code::NotFound => anyhow::Ok(true),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await;
    svc.child.kill()?;
    svc.child.wait()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((creates, reads))
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ticket-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (ca, cert, key) = certificates(&dir)?;
    let mut rows = Vec::new();
    for round in 1..=a.rounds {
        eprintln!("== round {round}: plaintext");
        let (plain_c, plain_r) = measure(&a, None).await?;
        eprintln!("== round {round}: TLS");
        let (tls_c, tls_r) = measure(&a, Some((&ca, &cert, &key))).await?;
        for (what, plain, tls) in [("CreateTicket", &plain_c, &tls_c), ("GetTicket", &plain_r, &tls_r)] {
            eprintln!("   {what}: plaintext {:.0}/s, TLS {:.0}/s", plain.rate(), tls.rate());
            rows.push((
                format!(
                    "{what} over gRPC, {} clients on 4 keep-alive connections, TLS vs plaintext (round {round})",
                    a.clients
                ),
                format!(
                    "TLS {:.0}/s (p50 {:.2} / p99 {:.2} ms{}); plaintext {:.0}/s (p50 {:.2} / p99 {:.2} ms{})",
                    tls.rate(),
                    tls.ms(0.5),
                    tls.ms(0.99),
                    errs(tls),
                    plain.rate(),
                    plain.ms(0.5),
                    plain.ms(0.99),
                    errs(plain)
                ),
                format!("{:.2}", tls.rate() / plain.rate().max(1.0)),
                "-".to_owned(),
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    crate::report("TLS vs plaintext (issue #22)", "tls", "TLS / plaintext throughput", &rows, a.append.as_deref())
}
