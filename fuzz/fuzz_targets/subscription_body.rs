//! A webhook subscription body: any bytes, parsed the way `POST /api/v1/webhooks` and
//! `PATCH /api/v1/webhooks/{id}` parse them, then checked by the same code (`actors::subscription_input`).
//! Whatever the bytes: a subscription or an error naming the field, never a panic; an accepted subscription
//! is storable (no NUL, bounded text and lists), and survives the JSON round trip it makes through the
//! store; a change keeps the subscription's id, secret and creation time. The address check (DNS) is network I/O, not parsing.
#![no_main]

use actors::subscription_input::{NewSubscription, SubscriptionPatch, MAX_URL_LEN};
use actors::validation::{MAX_ID_LEN, MAX_LIST_LEN};
use actors::webhooks::{Subscription, EVENT_TYPES};
use libfuzzer_sys::fuzz_target;

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

fn check(s: &Subscription) {
    assert!(!s.url.contains('\0') && s.url.len() <= MAX_URL_LEN);
    assert!(!s.events.is_empty() && s.events.iter().all(|e| EVENT_TYPES.contains(&e.as_str())));
    assert!(s.plan_id.as_ref().is_none_or(|p| !p.is_empty() && !p.contains('\0') && p.len() <= MAX_ID_LEN));
    let capabilities = s.capabilities.as_deref().unwrap_or_default();
    assert!(capabilities.len() <= MAX_LIST_LEN && s.task_types.len() <= MAX_LIST_LEN);
    assert!(capabilities.iter().all(|c| !c.contains('\0') && c.len() <= MAX_ID_LEN));
    let json = serde_json::to_string(s).expect("a subscription serializes");
    let back: Subscription = serde_json::from_str(&json).expect("a subscription reads back");
    assert_eq!(&back, s, "JSON round trip");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let base = || {
        let new: NewSubscription = serde_json::from_str(r#"{"url":"https://pool.example/hook","events":["ticket.completed"]}"#)
            .expect("the base subscription parses");
        new.into_subscription("wh_base".into(), "whsec_base".into(), 1).expect("the base subscription is valid")
    };
    if which % 2 == 0 {
        let new: NewSubscription = match parse(body) {
            Ok(n) => n,
            Err(message) => return assert!(!message.is_empty()),
        };
        match new.into_subscription("wh_fuzz".into(), "whsec_fuzz".into(), 2) {
            Ok(s) => check(&s),
            Err(e) => assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}"),
        }
    } else {
        let patch: SubscriptionPatch = match parse(body) {
            Ok(p) => p,
            Err(message) => return assert!(!message.is_empty()),
        };
        let before = base();
        match patch.apply(&before, 3) {
            Ok(s) => {
                check(&s);
                assert_eq!((s.id.as_str(), s.secret.as_str(), s.created_at), ("wh_base", "whsec_base", 1));
            }
            Err(e) => assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}"),
        }
    }
});
