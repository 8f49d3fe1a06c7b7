//! The keyset cursor of `GET /api/v1/tickets`: where the next page starts, opaque to clients.
//!
//! It is the last ticket's list-order key, `<created_at ms>:<ticket id>`, in unpadded base64url so it travels in a
//! query string as is. Opaque on purpose: clients pass it back unchanged, so its form may change later.

use actors::store::ListCursor;
use actors::Ticket;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::errors::ApiError;

/// The cursor that continues after `last`.
pub fn encode(last: &Ticket) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", last.created_at, last.ticket_id))
}

/// 9999-12-31T23:59:59.999Z in Unix milliseconds.
const MAX_MILLIS: i64 = 253_402_300_799_999;

/// A cursor [`encode`] made, or 422.
pub fn decode(cursor: &str) -> Result<ListCursor, ApiError> {
    let bad = || ApiError::Unprocessable("cursor: not a cursor this service gave (pass next_cursor unchanged)".into());
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (at, id) = text.split_once(':').ok_or_else(bad)?;
    let created_at: i64 = at.parse().map_err(|_| bad())?;
    // Only instants a ticket can have (epoch to year 9999): the store could not compare another.
    if !(0..=MAX_MILLIS).contains(&created_at) || id.is_empty() {
        return Err(bad());
    }
    Ok(ListCursor { created_at, ticket_id: id.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let c = decode(&URL_SAFE_NO_PAD.encode("1700000000123:t:with:colons")).unwrap();
        assert_eq!(c, ListCursor { created_at: 1_700_000_000_123, ticket_id: "t:with:colons".into() });
        for bad in [
            "",
            "!!!",
            &URL_SAFE_NO_PAD.encode("x:y"),
            &URL_SAFE_NO_PAD.encode("12:"),
            &URL_SAFE_NO_PAD.encode("12"),
            &URL_SAFE_NO_PAD.encode("-8000000000000000:t"),
            &URL_SAFE_NO_PAD.encode("253402300800000:t"),
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
