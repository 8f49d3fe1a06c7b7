//! Rows for PostgreSQL's binary `COPY … FROM STDIN`, each value encoded by sqlx's own `Encode` (the binary
//! format of a COPY field is the one a bound parameter uses).
//!
//! Why: a group commit inserts hundreds of tickets and their audit records. `INSERT … SELECT unnest(arrays)`
//! makes the server unpack one array per column and insert the rows one by one; COPY hands it the rows directly
//! and inserts them in page-sized batches (one WAL record per page). See `PgTicketStore::insert_many` for how a
//! COPY that meets an existing ticket falls back.

use sqlx::encode::{Encode, IsNull};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgConnection, Postgres};

/// The binary COPY stream being built: header, rows, trailer.
pub struct BinaryCopy {
    buf: PgArgumentBuffer,
    rows: u64,
}

impl BinaryCopy {
    pub fn new() -> Self {
        let mut buf = PgArgumentBuffer::default();
        // Signature, flags (no OIDs), header extension length.
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        BinaryCopy { buf, rows: 0 }
    }

    /// Start a row of `fields` values (then exactly that many [`field`](Self::field) calls).
    pub fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self.rows += 1;
    }

    /// One value, length-prefixed (-1 for NULL). Its Rust type must be the column's (COPY does not convert).
    pub fn field<'q, T: Encode<'q, Postgres>>(&mut self, value: T) -> Result<(), BoxDynError> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        let len = match value.encode_by_ref(&mut self.buf)? {
            IsNull::No => i32::try_from(self.buf.len() - at - 4)?,
            IsNull::Yes => -1,
        };
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Send the rows with `statement` (`COPY table (columns) FROM STDIN (FORMAT binary)`); returns how many
    /// the server stored.
    pub async fn send(mut self, conn: &mut PgConnection, statement: &str) -> Result<u64, sqlx::Error> {
        if self.rows == 0 {
            return Ok(0);
        }
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        let mut copy = conn.copy_in_raw(statement).await?;
        copy.send(self.buf.as_slice()).await?;
        copy.finish().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed_and_null_is_minus_one() {
        let mut copy = BinaryCopy::new();
        copy.row(3);
        copy.field("ab").unwrap();
        copy.field(7i64).unwrap();
        copy.field(None::<String>).unwrap();
        let body = &copy.buf[19..];
        assert_eq!(&body[..2], &3i16.to_be_bytes());
        assert_eq!(&body[2..8], &[0, 0, 0, 2, b'a', b'b']);
        assert_eq!(&body[8..20], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(&body[20..], &(-1i32).to_be_bytes());
    }
}
