//! Authentication. Today: minting ticket-scoped tokens. Verification and enforcement build on the same
//! [`TicketClaims`] (see the gRPC/auth issue).

pub mod token;
