//! `ticketctl`: the operator's command line for the ticket service: tickets over its gRPC API, webhook
//! subscriptions over its REST API (the only API that serves them), the Kafka dead-letter topic directly.
//!
//! ```text
//! ticketctl [--addr URL] [--rest-addr URL] [--token T] [--json] get ID
//!                                          list [--plan P] [--status S] [--limit N] [--offset N]
//!                                          watch [--plan P] [--status S]… [--ticket ID]… [--skip-snapshot]
//!                                          create FILE.json            (`-`: standard input)
//!                                          update ID STATUS [--error MSG] [--expected-version V]
//!                                          retry ID | cancel ID [--reason R] | compensate ID [--reason R] …
//!                                          history ID
//!                                          token ID
//!                                          dev-token --secret S [--subject NAME] [--ttl SECONDS]
//!                                          webhooks list | create --url U --event E… | show ID | deliveries ID
//!                                                   | redeliver ID DELIVERY_ID | rotate-secret ID | pause ID
//!                                                   | resume ID | delete ID | event-types
//!                                          dlq list | show PARTITION:OFFSET | replay [--limit N] [--dry-run]
//!                                              (each: --bootstrap HOST:PORT [--topic T])
//! ```
//! Over TLS with an `https://` address: `--ca` (the CA of the server's certificate), and for mutual TLS `--cert`
//! and `--key` (the client certificate, e.g. an X.509-SVID: with its SPIFFE ID mapped to the service role by
//! the service's SERVICE_SPIFFE_IDS, no token is needed). Tables by default, JSON with `--json`. The token is a
//! service token (or a ticket token, for `get` and `update` of that ticket), from `--token` or
//! `TICKETCTL_TOKEN`, sent to both APIs. `--addr` and `--rest-addr` take a URL or `host:port`. Exit statuses
//! (`exit.rs`): 0 done, 1 failed otherwise (also a DLQ message that could not be replayed), 2 usage or bad
//! input, 3 not found, 4 conflict or precondition, 5 unauthenticated or forbidden, 6 unavailable.

mod dlq;
mod exit;
mod ops;
mod output;
mod request;
mod rest;
mod webhooks;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::json;
use ticket_supervisor::grpc::pb;
use ticket_supervisor::grpc::pb::ticket_service_client::TicketServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The gRPC client, with the caller's token on every call.
pub type Client = TicketServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Parser)]
#[command(name = "ticketctl", version, about = "Operate the execution ticket service")]
struct Cli {
    /// The service's gRPC address: a URL, or `host:port` (plain HTTP/2).
    #[arg(long, global = true, env = "TICKETCTL_ADDR", default_value = "http://127.0.0.1:50052")]
    addr: String,
    /// The service's REST address, for `webhooks`: a URL, or `host:port` (plain HTTP). Default: the host of
    /// `--addr`, port 8000, with its scheme (so a token meant for an `https://` service never goes out in clear).
    #[arg(long, global = true, env = "TICKETCTL_REST_URL")]
    rest_addr: Option<String>,
    /// Bearer token sent with every call.
    #[arg(long, global = true, env = "TICKETCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate(s) (PEM) the server's certificate must chain to; with an https:// address.
    #[arg(long, global = true, env = "TICKETCTL_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --key.
    #[arg(long, global = true, env = "TICKETCTL_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "TICKETCTL_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show one ticket.
    Get { ticket_id: String },
    /// List tickets, newest first.
    List {
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i32,
        #[arg(long, default_value_t = 0)]
        offset: i32,
    },
    /// Follow ticket events (after a snapshot of the matching tickets) until interrupted.
    Watch {
        #[arg(long)]
        plan: Option<String>,
        #[arg(long = "status")]
        statuses: Vec<String>,
        #[arg(long = "ticket")]
        tickets: Vec<String>,
        #[arg(long)]
        skip_snapshot: bool,
        /// Longest pause between two reconnection attempts, seconds.
        #[arg(long, default_value_t = 10)]
        max_backoff: u64,
    },
    /// Create a ticket from a JSON file (the REST create body).
    Create { file: PathBuf },
    /// Change a ticket's status.
    Update {
        ticket_id: String,
        status: String,
        #[arg(long)]
        error: Option<String>,
        #[arg(long)]
        expected_version: Option<i64>,
    },
    /// Send a FAILED ticket back to PENDING (a manual retry, even with its retry budget spent).
    Retry {
        ticket_id: String,
        #[arg(long)]
        expected_version: Option<i64>,
    },
    /// Cancel a PENDING or RUNNING ticket.
    Cancel {
        ticket_id: String,
        /// Stored as the ticket's error message.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        expected_version: Option<i64>,
    },
    /// Compensate a RUNNING or FAILED ticket: creates its COMPENSATE ticket (or shows the existing one).
    Compensate {
        ticket_id: String,
        #[arg(long)]
        reason: Option<String>,
        /// The compensation action (the service's default: rollback).
        #[arg(long)]
        action: Option<String>,
        /// The compensation ticket's parameters, a JSON object (default: the original's).
        #[arg(long)]
        parameters: Option<String>,
    },
    /// A ticket's history (its audit records), oldest first.
    History { ticket_id: String },
    /// Mint a ticket-scoped token for a worker.
    Token { ticket_id: String },
    /// Mint a service token from the service's SERVICE_JWT_SECRET (development and break-glass use).
    DevToken {
        #[arg(long, env = "SERVICE_JWT_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long, default_value = "ticketctl")]
        subject: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// The `aud` the service requires (its SERVICE_JWT_AUDIENCE); the service's default when absent.
        #[arg(long, env = "SERVICE_JWT_AUDIENCE")]
        audience: Option<String>,
        /// The `iss` the service requires (its SERVICE_JWT_ISSUER), if any.
        #[arg(long, env = "SERVICE_JWT_ISSUER")]
        issuer: Option<String>,
    },
    /// Webhook subscriptions of worker pools (over the REST API: --rest-addr).
    Webhooks {
        #[command(subcommand)]
        command: webhooks::WebhookCommand,
    },
    /// The Kafka dead-letter topic: list and show its messages, replay them.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// `dlq replay`, under its former name (kept for scripts).
    #[command(hide = true)]
    DlqReplay(dlq::ReplayArgs),
}

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// `--addr` as a URL: `host:port` means `http://host:port`.
fn endpoint(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// The TLS client settings of `--ca`, `--cert` and `--key`; None without them.
fn tls_config(cli: &Cli) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read =
        |flag: &str, path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {flag} {}", path.display()));
    let https = cli.addr.starts_with("https://");
    if cli.ca.is_none() && cli.cert.is_none() {
        anyhow::ensure!(!https, "an https:// --addr needs --ca (the CA of the server's certificate)");
        return Ok(None);
    }
    anyhow::ensure!(https, "--ca, --cert and --key need an https:// --addr, not {:?}", cli.addr);
    let ca = cli.ca.as_ref().context("--cert needs --ca (the CA of the server's certificate)")?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca", ca)?));
    if let (Some(cert), Some(key)) = (&cli.cert, &cli.key) {
        config = config.identity(Identity::from_pem(read("--cert", cert)?, read("--key", key)?));
    }
    Ok(Some(config))
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let mut endpoint = Channel::from_shared(endpoint(&cli.addr))
        .map_err(|e| exit::coded(exit::Exit::Usage, format!("--addr {:?} is not a URL or host:port: {e}", cli.addr)))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls_config(cli).map_err(|e| exit::coded(exit::Exit::Usage, format!("{e:#}")))? {
        endpoint = endpoint.tls_config(tls).context("the TLS settings")?;
    }
    let channel = endpoint
        .connect()
        .await
        .context(exit::Coded { exit: exit::Exit::Unavailable, message: format!("connecting to {}", cli.addr) })?;
    let bearer = match &cli.token {
        Some(t) => Some(format!("Bearer {}", t.trim()).parse().context("the token is not a valid header value")?),
        None => None,
    };
    Ok(TicketServiceClient::with_interceptor(channel, Bearer(bearer)))
}

use exit::call_error;

/// Print a line on stdout. A closed pipe (`ticketctl list | head`) ends the program quietly, as with any
/// Unix tool, instead of the panic of `println!`.
fn say(text: impl std::fmt::Display) {
    use std::io::Write as _;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{text}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("ticketctl: writing to stdout: {e}");
        std::process::exit(1);
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    say(serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_ticket(cli: &Cli, t: Option<pb::ExecutionTicketProto>) -> anyhow::Result<()> {
    let t = t.context("the service answered without a ticket")?;
    if cli.json {
        print_json(&output::ticket_json(&t))
    } else {
        say(output::ticket_details(&t));
        Ok(())
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The commands that need no gRPC connection (the DLQ's replay connects itself, unless a dry run).
    match &cli.command {
        Command::Webhooks { command } => return webhooks::run(&cli, command).await,
        Command::Dlq { command } => return dlq::run(&cli, command).await,
        Command::DlqReplay(args) => return dlq::run_replay(&cli, args).await,
        _ => {}
    }
    if let Command::DevToken { secret, subject, ttl, audience, issuer } = &cli.command {
        let lookup = |name: &str| match name {
            "SERVICE_JWT_SECRET" => Some(secret.clone()),
            "SERVICE_JWT_AUDIENCE" => audience.clone(),
            "SERVICE_JWT_ISSUER" => issuer.clone(),
            _ => None,
        };
        let settings = ticket_supervisor::config::Settings::from_lookup(lookup)?;
        let token = ticket_supervisor::auth::token::service_token(secret, &settings.auth, subject, *ttl)?;
        if cli.json {
            return print_json(&json!({ "token": token, "subject": subject, "expires_in": ttl }));
        }
        say(token);
        return Ok(());
    }
    let mut client = connect(&cli).await?;
    match &cli.command {
        Command::Get { ticket_id } => {
            let req = pb::GetTicketRequest { ticket_id: ticket_id.clone() };
            let res = client.get_ticket(req).await.map_err(call_error("GetTicket"))?.into_inner();
            print_ticket(&cli, res.ticket)
        }
        Command::List { plan, status, limit, offset } => {
            let req = pb::ListTicketsRequest {
                plan_id: plan.clone().unwrap_or_default(),
                status: status.clone().unwrap_or_default(),
                offset: *offset,
                limit: *limit,
            };
            let res = client.list_tickets(req).await.map_err(call_error("ListTickets"))?.into_inner();
            if cli.json {
                let tickets: Vec<_> = res.tickets.iter().map(output::ticket_json).collect();
                return print_json(&json!({ "tickets": tickets, "total": res.total, "offset": offset }));
            }
            say(output::ticket_rows(&res.tickets));
            say(format_args!("({} of {} shown)", res.tickets.len(), res.total));
            Ok(())
        }
        Command::Watch { plan, statuses, tickets, skip_snapshot, max_backoff } => {
            let args = ops::WatchArgs {
                plan: plan.clone(),
                statuses: statuses.clone(),
                tickets: tickets.clone(),
                skip_snapshot: *skip_snapshot,
                max_backoff: Duration::from_secs((*max_backoff).max(1)),
            };
            ops::watch(&cli, args).await
        }
        Command::Retry { ticket_id, expected_version } => {
            ops::retry(&cli, &mut client, ticket_id, *expected_version).await
        }
        Command::Cancel { ticket_id, reason, expected_version } => {
            ops::cancel(&cli, &mut client, ticket_id, reason.clone(), *expected_version).await
        }
        Command::Compensate { ticket_id, reason, action, parameters } => {
            ops::compensate(&cli, &mut client, ticket_id, reason.clone(), action.clone(), parameters.clone()).await
        }
        Command::History { ticket_id } => ops::history(&cli, &mut client, ticket_id).await,
        Command::Create { file } => {
            let new = request::read_new_ticket(file).map_err(|e| exit::coded(exit::Exit::Usage, format!("{e:#}")))?;
            let ticket = Some(request::new_to_proto(new));
            let res =
                client.create_ticket(pb::CreateTicketRequest { ticket }).await.map_err(call_error("CreateTicket"))?;
            let res = res.into_inner();
            if cli.json {
                let ticket = res.ticket.as_ref().map(output::ticket_json);
                return print_json(&json!({ "created": res.created, "ticket": ticket }));
            }
            say(if res.created { "created" } else { "already exists (same content): nothing changed" });
            print_ticket(&cli, res.ticket)
        }
        Command::Update { ticket_id, status, error, expected_version } => {
            let req = pb::UpdateTicketStatusRequest {
                ticket_id: ticket_id.clone(),
                status: status.clone(),
                error_message: error.clone().unwrap_or_default(),
                actual_duration_ms: None,
                expected_version: *expected_version,
            };
            let res = client.update_ticket_status(req).await.map_err(call_error("UpdateTicketStatus"))?;
            print_ticket(&cli, res.into_inner().ticket)
        }
        Command::Token { ticket_id } => {
            let req = pb::GenerateTokenRequest { ticket_id: ticket_id.clone() };
            let res = client.generate_token(req).await.map_err(call_error("GenerateToken"))?.into_inner();
            if cli.json {
                return print_json(&json!({
                    "access_token": res.access_token, "expires_at": res.expires_at, "scopes": res.scopes,
                }));
            }
            let rows = vec![
                vec!["access_token".to_owned(), res.access_token],
                vec!["expires_at".to_owned(), output::time(Some(res.expires_at * 1000))],
                vec!["scopes".to_owned(), res.scopes.join(" ")],
            ];
            say(output::table(&["FIELD", "VALUE"], &rows));
            Ok(())
        }
        Command::DevToken { .. } | Command::Webhooks { .. } | Command::Dlq { .. } | Command::DlqReplay(_) => {
            unreachable!("answered above without a connection")
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TICKETCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours for a terminal only: piped into a file or a script, stderr stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_env_filter(filter).init();
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("ticketctl: {e:#}");
        std::process::exit(exit::status_of(&e));
    }
}
