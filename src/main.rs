use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use ticket_supervisor::cli;
use ticket_supervisor::startup::Application;
use ticket_supervisor::telemetry;

/// `ticket-supervisor healthcheck`: exit 0 when this host's `/health` answers 200. For container
/// HEALTHCHECKs on images that carry no curl.
fn healthcheck(port: u16) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    anyhow::ensure!(head.ends_with(b"200"), "unhealthy: {}", String::from_utf8_lossy(&head));
    Ok(())
}

/// mimalloc instead of glibc's allocator: ticket actors, messages and rows are many small allocations made
/// and freed on several threads, where glibc's arenas spent a quarter of the ingest profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    // `--help`, `--version` and unknown arguments end here (exit 0 / 0 / 2) without starting anything.
    let matches = cli::command().get_matches();
    let settings = cli::settings(&matches)?;
    if matches.subcommand_name() == Some("healthcheck") {
        return healthcheck(settings.http_port);
    }
    let _otlp = telemetry::init_with_otlp(&settings.log_level, settings.otel_endpoint.as_deref())?;
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "startup failed");
            return Err(e);
        }
    };
    tracing::info!("Service startup complete");
    app.run_until_stopped().await
}
