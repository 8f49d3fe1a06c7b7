//! `ticketctl webhooks …`: worker pools' webhook subscriptions, which only the REST API serves
//! (`/api/v1/webhooks`, service tokens only). `--json` prints the service's answer as it is; the tables read
//! their fields from it. The signing secret is shown by `create` and `rotate-secret`, the only two answers that
//! carry it: it cannot be read again.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::rest::Rest;
use crate::{output, print_json, say, Cli};

#[derive(Subcommand)]
pub enum WebhookCommand {
    /// Every subscription.
    List,
    /// Subscribe an endpoint; prints its signing secret, this once.
    Create(CreateArgs),
    /// One subscription.
    Show { id: String },
    /// A subscription's deliveries, newest first: status, attempts, last error, next try.
    Deliveries {
        id: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, default_value_t = 0)]
        offset: u32,
    },
    /// Send a delivery again, now, whatever its state (same `webhook-id`).
    Redeliver { id: String, delivery_id: String },
    /// A new signing secret, printed this once; the old one keeps signing beside it for a while
    /// (the service's WEBHOOK_SECRET_OVERLAP_SECONDS).
    RotateSecret { id: String },
    /// Hold deliveries (they wait, and are sent on resume).
    Pause { id: String },
    /// Send deliveries again; also re-enables a subscription the service disabled (410 Gone, failing too long).
    Resume { id: String },
    /// Unsubscribe (pending deliveries are dropped).
    Delete { id: String },
    /// The event types a subscription may ask for.
    EventTypes,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Where deliveries are POSTed.
    #[arg(long)]
    pub url: String,
    /// Event types, repeated or comma-separated (see `webhooks event-types`).
    #[arg(long = "event", value_delimiter = ',', required = true)]
    pub events: Vec<String>,
    /// Only tickets of these task types (default: any).
    #[arg(long = "task-type", value_delimiter = ',')]
    pub task_types: Vec<String>,
    /// The pool's capabilities: a ticket matches when its required capabilities are among them (default: any
    /// ticket).
    #[arg(long = "capability", value_delimiter = ',')]
    pub capabilities: Option<Vec<String>>,
    /// Only tickets of at least this priority.
    #[arg(long)]
    pub min_priority: Option<String>,
    /// Only tickets of this plan.
    #[arg(long = "plan")]
    pub plan_id: Option<String>,
}

impl CreateArgs {
    fn body(&self) -> Value {
        let mut body = json!({ "url": self.url, "events": self.events, "task_types": self.task_types });
        if let Some(c) = &self.capabilities {
            body["capabilities"] = json!(c);
        }
        if let Some(p) = &self.min_priority {
            body["min_priority"] = json!(p);
        }
        if let Some(p) = &self.plan_id {
            body["plan_id"] = json!(p);
        }
        body
    }
}

pub async fn run(cli: &Cli, command: &WebhookCommand) -> anyhow::Result<()> {
    let rest = Rest::new(cli)?;
    const API: &str = "api";
    const V1: &str = "v1";
    const HOOKS: &str = "webhooks";
    match command {
        WebhookCommand::List => {
            let all = rest.call(Method::GET, &[API, V1, HOOKS], &[], None).await?;
            if cli.json {
                return print_json(&all);
            }
            let subs = all.as_array().map(Vec::as_slice).unwrap_or_default();
            say(subscription_rows(subs));
            say(format_args!("({} subscriptions)", subs.len()));
            Ok(())
        }
        WebhookCommand::Create(args) => {
            let created = rest.call(Method::POST, &[API, V1, HOOKS], &[], Some(&args.body())).await?;
            print_with_secret(cli, &created, "subscribed")
        }
        WebhookCommand::Show { id } => {
            let s = rest.call(Method::GET, &[API, V1, HOOKS, id], &[], None).await?;
            print_subscription(cli, &s)
        }
        WebhookCommand::Deliveries { id, limit, offset } => {
            let query = [("limit", limit.to_string()), ("offset", offset.to_string())];
            let page = rest.call(Method::GET, &[API, V1, HOOKS, id, "deliveries"], &query, None).await?;
            if cli.json {
                return print_json(&page);
            }
            let deliveries = page["deliveries"].as_array().map(Vec::as_slice).unwrap_or_default();
            say(delivery_rows(deliveries));
            say(format_args!("({} of {} shown)", deliveries.len(), page["total"]));
            Ok(())
        }
        WebhookCommand::Redeliver { id, delivery_id } => {
            let path = [API, V1, HOOKS, id, "deliveries", delivery_id, "redeliver"];
            rest.call(Method::POST, &path, &[], None).await?;
            if cli.json {
                return print_json(&json!({ "subscription_id": id, "delivery_id": delivery_id, "queued": true }));
            }
            say(format_args!("delivery {delivery_id} queued to be sent again"));
            Ok(())
        }
        WebhookCommand::RotateSecret { id } => {
            let rotated = rest.call(Method::POST, &[API, V1, HOOKS, id, "rotate-secret"], &[], None).await?;
            print_with_secret(cli, &rotated, "secret rotated")
        }
        WebhookCommand::Pause { id } | WebhookCommand::Resume { id } => {
            let change = json!({ "paused": matches!(command, WebhookCommand::Pause { .. }) });
            let s = rest.call(Method::PATCH, &[API, V1, HOOKS, id], &[], Some(&change)).await?;
            print_subscription(cli, &s)
        }
        WebhookCommand::Delete { id } => {
            rest.call(Method::DELETE, &[API, V1, HOOKS, id], &[], None).await?;
            if cli.json {
                return print_json(&json!({ "deleted": id }));
            }
            say(format_args!("subscription {id} deleted"));
            Ok(())
        }
        WebhookCommand::EventTypes => {
            let types = rest.call(Method::GET, &[API, V1, HOOKS, "event-types"], &[], None).await?;
            if cli.json {
                return print_json(&types);
            }
            for t in types.as_array().map(Vec::as_slice).unwrap_or_default() {
                say(t.as_str().unwrap_or_default());
            }
            Ok(())
        }
    }
}

fn print_subscription(cli: &Cli, s: &Value) -> anyhow::Result<()> {
    if cli.json {
        return print_json(s);
    }
    say(subscription_details(s));
    Ok(())
}

/// The answer of a creation or rotation: the subscription and its secret, which is not shown again.
fn print_with_secret(cli: &Cli, s: &Value, done: &str) -> anyhow::Result<()> {
    if cli.json {
        return print_json(s);
    }
    say(done);
    say(subscription_details(s));
    say(format_args!("\nsecret: {}", s["secret"].as_str().unwrap_or("-")));
    say("(shown this once: store it now; `rotate-secret` makes a new one)");
    Ok(())
}

fn str_of(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(str_of).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// `active`, `paused`, or `disabled: REASON` (by the service).
fn state(s: &Value) -> String {
    match (&s["disabled_reason"], s["paused"].as_bool()) {
        (Value::String(reason), _) => format!("disabled: {reason}"),
        (_, Some(true)) => "paused".into(),
        _ => "active".into(),
    }
}

fn time_of(v: &Value) -> String {
    output::time(v.as_i64())
}

/// One subscription, one field per line.
pub fn subscription_details(s: &Value) -> String {
    let capabilities = match &s["capabilities"] {
        Value::Null => "(any)".into(),
        other => str_of(other),
    };
    let mut rows = vec![
        ("id", str_of(&s["id"])),
        ("url", str_of(&s["url"])),
        ("state", state(s)),
        ("events", str_of(&s["events"])),
        ("task_types", str_of(&s["task_types"])),
        ("capabilities", capabilities),
        ("min_priority", str_of(&s["min_priority"])),
        ("plan_id", str_of(&s["plan_id"])),
        ("failures", str_of(&s["consecutive_failures"])),
        ("failing_since", time_of(&s["failing_since"])),
        ("created_at", time_of(&s["created_at"])),
        ("updated_at", time_of(&s["updated_at"])),
    ];
    if let Some(until) = s["previous_secret_until"].as_i64() {
        rows.push(("old_secret_until", output::time(Some(until))));
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(k, v)| vec![k.to_owned(), v]).collect();
    output::table(&["FIELD", "VALUE"], &rows)
}

/// Subscriptions, one per line.
pub fn subscription_rows(subs: &[Value]) -> String {
    let rows: Vec<Vec<String>> = subs
        .iter()
        .map(|s| {
            vec![
                str_of(&s["id"]),
                state(s),
                str_of(&s["events"]),
                str_of(&s["url"]),
                str_of(&s["consecutive_failures"]),
                time_of(&s["updated_at"]),
            ]
        })
        .collect();
    output::table(&["ID", "STATE", "EVENTS", "URL", "FAILURES", "UPDATED_AT"], &rows)
}

/// Deliveries, one per line.
pub fn delivery_rows(deliveries: &[Value]) -> String {
    let rows: Vec<Vec<String>> = deliveries
        .iter()
        .map(|d| {
            vec![
                str_of(&d["id"]),
                str_of(&d["event_type"]),
                str_of(&d["ticket_id"]),
                str_of(&d["status"]),
                str_of(&d["attempts"]),
                str_of(&d["last_status"]),
                output::shorten(&str_of(&d["last_error"]), 60),
                time_of(&d["next_attempt_at"]),
                time_of(&d["created_at"]),
            ]
        })
        .collect();
    let headers = [
        "DELIVERY_ID",
        "EVENT",
        "TICKET_ID",
        "STATUS",
        "ATTEMPTS",
        "LAST_STATUS",
        "LAST_ERROR",
        "NEXT_ATTEMPT",
        "CREATED_AT",
    ];
    output::table(&headers, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_tells_paused_from_disabled() {
        assert_eq!(state(&json!({"paused": false, "disabled_reason": null})), "active");
        assert_eq!(state(&json!({"paused": true, "disabled_reason": null})), "paused");
        assert_eq!(state(&json!({"paused": false, "disabled_reason": "410 Gone"})), "disabled: 410 Gone");
    }

    #[test]
    fn create_sends_only_what_was_given() {
        let args = CreateArgs {
            url: "http://x/hook".into(),
            events: vec!["ticket.created".into()],
            task_types: vec![],
            capabilities: None,
            min_priority: None,
            plan_id: Some("p".into()),
        };
        let body = args.body();
        assert_eq!(body["plan_id"], "p");
        assert!(body.get("capabilities").is_none(), "absent: any ticket, not none: {body}");
        assert!(body.get("min_priority").is_none());
    }
}
