//! Kafka payload decoding: any bytes, as the consumer gets them, through the service's own decoder
//! (`src/kafka/decode.rs`, included as it is). Whatever the bytes, decoding answers a request or
//! `DecodeError::Invalid` (a DLQ), never a panic; a decoded request then goes through the one validation.
//!
//! The first input byte picks the framing so that both paths are reached from any corpus: even → the payload
//! as it is (Confluent wire format if it starts with byte 0, else JSON), odd → the rest framed as a Confluent
//! message with the bundled schema (so the fuzzer mutates the Avro datum, not the header).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/kafka/decode.rs"]
mod decode;

use decode::{decode_avro, decode_json, DecodeError};

/// What `Decoder::decode` does without a schema registry (the registry lookup is network I/O, not parsing).
fn decode_payload(payload: &[u8]) -> Result<actors::validation::NewTicket, DecodeError> {
    match payload {
        [0, _, _, _, _, datum @ ..] => decode_avro(datum),
        _ => decode_json(payload),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let result = if mode % 2 == 0 { decode_payload(rest) } else { decode_avro(rest) };
    match result {
        Ok(new) => {
            if let Ok(valid) = new.validate(1_700_000_000_000, || "generated".into()) {
                let t = valid.ticket;
                assert!(t.spec.sla.timeout_ms > 0 && t.spec.sla.max_retries >= 0 && t.retry_count >= 0);
                assert!((0..=actors::validation::MAX_TIMESTAMP).contains(&t.spec.sla.deadline));
            }
        }
        Err(DecodeError::Invalid(message)) => assert!(!message.is_empty()),
        Err(DecodeError::RegistryUnavailable(m)) => panic!("no registry is configured, yet: {m}"),
    }
});
