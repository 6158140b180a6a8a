use order_service::config::Settings;
use order_service::startup::build;
use platform::config::ServiceSettings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _logs = platform::telemetry::init("order-service", "info,sqlx=warn,async_nats=warn");
    let settings = Settings::load()?;
    let app = build(&settings).await?;
    tracing::info!(port = app.port(), "order service listening");
    app.run(platform::app::shutdown_signal()).await?;
    Ok(())
}
