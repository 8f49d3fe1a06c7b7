use ticket_supervisor::config::Settings;
use ticket_supervisor::startup::Application;
use ticket_supervisor::telemetry;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    telemetry::init(&settings.log_level);
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
