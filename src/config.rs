//! Configuration from environment variables, named as in the original service, each with a default.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use actors::SystemConfig;
use anyhow::{bail, Context as _};
use sqlx::postgres::PgConnectOptions;

/// Where tickets are stored.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// PostgreSQL (POSTGRES_* or DATABASE_URL set).
    Postgres {
        options: Box<PgConnectOptions>,
        pool_size: u32,
        connect_timeout: Duration,
    },
    /// SQLite file under DATA_DIR (the default).
    Embedded { data_dir: PathBuf },
}

/// JWT minting.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub secret: String,
    pub expiration_seconds: i64,
    /// The secret was generated at startup (JWT_SECRET_KEY unset): tokens die with the process.
    pub generated: bool,
}

/// Everything the service reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind_host: String,
    pub http_port: u16,
    pub grpc_port: u16,
    pub prometheus_port: u16,
    pub store: StoreSettings,
    pub jwt: JwtSettings,
    pub log_level: String,
    pub environment: String,
    pub actors: SystemConfig,
}

fn parse<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match get(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v:?} is invalid: {e}")),
    }
}

impl Settings {
    /// Read the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read settings through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let environment = get("ENVIRONMENT").unwrap_or_else(|| "development".into());
        let store = if let Some(url) = get("DATABASE_URL").filter(|v| !v.is_empty()) {
            let options =
                PgConnectOptions::from_str(&url).context("DATABASE_URL is not a PostgreSQL URL")?;
            Some(options)
        } else if let Some(host) = get("POSTGRES_HOST").filter(|v| !v.is_empty()) {
            let mut options = PgConnectOptions::new()
                .host(&host)
                .port(parse(&get, "POSTGRES_PORT", 5432)?)
                .database(&get("POSTGRES_DATABASE").unwrap_or_else(|| "execution_tickets".into()))
                .username(&get("POSTGRES_USER").unwrap_or_else(|| "postgres".into()));
            if let Some(password) = get("POSTGRES_PASSWORD") {
                options = options.password(&password);
            }
            Some(options)
        } else {
            None
        };
        let store = match store {
            Some(options) => StoreSettings::Postgres {
                options: Box::new(options),
                pool_size: parse(&get, "POSTGRES_POOL_SIZE", 10)?,
                connect_timeout: Duration::from_secs(parse(
                    &get,
                    "POSTGRES_CONNECT_TIMEOUT_SECONDS",
                    30,
                )?),
            },
            None => StoreSettings::Embedded {
                data_dir: PathBuf::from(get("DATA_DIR").unwrap_or_else(|| "./data".into())),
            },
        };

        let jwt = match get("JWT_SECRET_KEY").filter(|v| !v.is_empty()) {
            Some(secret) => JwtSettings {
                secret,
                expiration_seconds: 0,
                generated: false,
            },
            None if environment.eq_ignore_ascii_case("production") => {
                bail!("JWT_SECRET_KEY must be set when ENVIRONMENT=production")
            }
            None => {
                use rand::RngCore as _;
                let mut bytes = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut bytes);
                use base64::Engine as _;
                let secret = base64::engine::general_purpose::STANDARD.encode(bytes);
                JwtSettings {
                    secret,
                    expiration_seconds: 0,
                    generated: true,
                }
            }
        };
        let expiration_seconds: i64 = parse(&get, "JWT_TOKEN_EXPIRATION_SECONDS", 3600)?;
        if expiration_seconds <= 0 {
            bail!("JWT_TOKEN_EXPIRATION_SECONDS must be > 0");
        }
        let jwt = JwtSettings {
            expiration_seconds,
            ..jwt
        };

        let defaults = SystemConfig::default();
        let actors = SystemConfig {
            shards: parse(&get, "ACTOR_SHARDS", defaults.shards)?,
            arbiters: parse(&get, "ACTOR_ARBITERS", defaults.arbiters)?,
            mailbox_capacity: parse(&get, "ACTOR_MAILBOX_CAPACITY", defaults.mailbox_capacity)?,
            passivate_after: Duration::from_secs(parse(
                &get,
                "ACTOR_PASSIVATE_AFTER_SECONDS",
                defaults.passivate_after.as_secs(),
            )?),
            sweep_every: defaults.sweep_every,
            persist_in_flight: parse(&get, "PERSIST_MAX_IN_FLIGHT", defaults.persist_in_flight)?,
            persist_max_batch: parse(&get, "PERSIST_MAX_BATCH", defaults.persist_max_batch)?,
        };

        Ok(Settings {
            bind_host: get("BIND_HOST").unwrap_or_else(|| "0.0.0.0".into()),
            http_port: parse(&get, "HTTP_PORT", 8000)?,
            grpc_port: parse(&get, "GRPC_PORT", 50052)?,
            prometheus_port: parse(&get, "PROMETHEUS_PORT", 9090)?,
            store,
            jwt,
            log_level: get("LOG_LEVEL").unwrap_or_else(|| "info".into()),
            environment,
            actors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_run_on_the_embedded_store() {
        let s = settings(&[]).unwrap();
        assert_eq!(
            (s.http_port, s.grpc_port, s.prometheus_port),
            (8000, 50052, 9090)
        );
        assert!(
            matches!(s.store, StoreSettings::Embedded { ref data_dir } if data_dir == &PathBuf::from("./data"))
        );
        assert!(s.jwt.generated);
        assert_eq!(s.jwt.expiration_seconds, 3600);
    }

    #[test]
    fn postgres_host_selects_postgres() {
        let s = settings(&[("POSTGRES_HOST", "db"), ("POSTGRES_POOL_SIZE", "3")]).unwrap();
        assert!(matches!(
            s.store,
            StoreSettings::Postgres { pool_size: 3, .. }
        ));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = settings(&[("HTTP_PORT", "eighty")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("HTTP_PORT"), "{err}");
        let err = settings(&[("ENVIRONMENT", "production")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("JWT_SECRET_KEY"), "{err}");
    }
}
