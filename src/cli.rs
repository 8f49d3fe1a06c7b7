//! The server's command line: `--help` (every configuration variable with its default), `--version`, one
//! `--flag` per variable (`--http-port 8001` is `HTTP_PORT=8001`; a flag wins over the environment), and the
//! `healthcheck` subcommand. Anything else is refused with a usage message and exit code 2 — before, any
//! argument (even `--help`) started the service.
//!
//! The variables, their defaults and meanings are read from the README's configuration table, compiled in, so
//! the documentation and `--help` cannot drift apart; a test checks that the table names every variable the
//! loader ([`Settings::from_lookup`]) reads.

use clap::{Arg, ArgMatches, Command};

use crate::config::Settings;

/// One row of the README's configuration table, per variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub default: String,
    pub meaning: String,
}

const README: &str = include_str!("../README.md");

/// Every configuration variable, in the README's order.
pub fn variables() -> Vec<Variable> {
    let table = README.split("## Configuration").nth(1).unwrap_or_default();
    let table = table.split("\n## ").next().unwrap_or_default();
    let mut out = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let [names, default, meaning] = cells[..] else { continue };
        let names: Vec<String> = names.split('`').skip(1).step_by(2).flat_map(expand).collect();
        // "a, b" defaults belong to the names in order when there are as many; otherwise they are the row's.
        let defaults: Vec<&str> = default.split(", ").collect();
        for (i, name) in names.iter().enumerate() {
            let default = if defaults.len() == names.len() { defaults[i] } else { default };
            out.push(Variable { name: name.clone(), default: default.to_owned(), meaning: meaning.to_owned() });
        }
    }
    out
}

/// `SLA_START_LIMIT_{LOW,HIGH}_SECONDS` → both names; a plain name → itself.
fn expand(pattern: &str) -> Vec<String> {
    match (pattern.find('{'), pattern.find('}')) {
        (Some(open), Some(close)) if open < close => pattern[open + 1..close]
            .split(',')
            .map(|alt| format!("{}{}{}", &pattern[..open], alt, &pattern[close + 1..]))
            .collect(),
        _ => vec![pattern.to_owned()],
    }
}

/// The command line parser.
pub fn command() -> Command {
    let mut cmd = Command::new("ticket-supervisor")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Execution ticket supervisor: REST on HTTP_PORT, gRPC on GRPC_PORT, metrics on PROMETHEUS_PORT")
        .after_help(
            "Every option can also be given as its environment variable (shown as [env: …]); an option on the \
             command line wins. Without DATABASE_URL or POSTGRES_HOST tickets are stored in DATA_DIR.",
        )
        .subcommand(Command::new("healthcheck").about("Exit 0 when this host's /health answers 200 (for containers)"));
    for v in variables() {
        let long = v.name.to_ascii_lowercase().replace('_', "-");
        let help = format!("{} [default: {}]", v.meaning.replace('`', ""), v.default.replace('`', ""));
        // `hide_env_values`: --help must not print secrets taken from the environment.
        let arg = Arg::new(v.name.clone()).long(long).env(v.name).value_name("VALUE").help(help).hide_env_values(true);
        cmd = cmd.arg(arg);
    }
    cmd
}

/// Settings from parsed arguments: each variable from its flag, else its environment variable (also one the
/// README does not list, so a missing row never disables a variable — the test catches the row).
pub fn settings(matches: &ArgMatches) -> anyhow::Result<Settings> {
    Settings::from_lookup(|name| {
        let flag = matches.try_get_one::<String>(name).ok().flatten().cloned();
        flag.or_else(|| std::env::var(name).ok())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Mutex;

    use super::*;

    /// The names the loader reads, with values that take every optional branch (PostgreSQL, Kafka, MongoDB).
    fn names_the_loader_reads() -> BTreeSet<String> {
        let seen = Mutex::new(BTreeSet::new());
        let branches: HashMap<&str, &str> = [
            ("POSTGRES_HOST", "db"),
            ("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092"),
            ("MONGODB_URI", "mongodb://m"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        ]
        .into();
        Settings::from_lookup(|name| {
            seen.lock().unwrap().insert(name.to_owned());
            branches.get(name).map(|v| v.to_string())
        })
        .unwrap();
        seen.into_inner().unwrap()
    }

    #[test]
    fn the_readme_table_and_help_name_every_variable_the_loader_reads() {
        let documented: BTreeSet<String> = variables().into_iter().map(|v| v.name).collect();
        let missing: Vec<String> = names_the_loader_reads().difference(&documented).cloned().collect();
        assert!(missing.is_empty(), "add these to the README's configuration table: {missing:?}");
        let help = command().render_long_help().to_string();
        for name in &documented {
            assert!(help.contains(&format!("--{}", name.to_ascii_lowercase().replace('_', "-"))), "{name}");
        }
        let port = variables().into_iter().find(|v| v.name == "POSTGRES_PORT").unwrap();
        assert_eq!(port.default, "5432", "row defaults are split per name");
        assert!(documented.contains("SLA_START_LIMIT_CRITICAL_SECONDS"), "patterns are expanded");
    }

    #[test]
    fn flags_set_variables_and_unknown_arguments_are_refused() {
        let m = command().try_get_matches_from(["ticket-supervisor", "--http-port", "8123"]).unwrap();
        assert_eq!(settings(&m).unwrap().http_port, 8123);
        let m = command().try_get_matches_from(["ticket-supervisor", "--environment", "prodution"]).unwrap();
        assert!(settings(&m).unwrap_err().to_string().contains("ENVIRONMENT"));
        for args in [vec!["ticket-supervisor", "--no-such-flag"], vec!["ticket-supervisor", "serve-please"]] {
            let e = command().try_get_matches_from(&args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        let e = command().try_get_matches_from(["ticket-supervisor", "--version"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
    }
}
