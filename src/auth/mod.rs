//! Authentication: minting ticket-scoped tokens ([`token`]) and verifying every bearer token ([`verify`]).

pub mod token;
pub mod verify;
