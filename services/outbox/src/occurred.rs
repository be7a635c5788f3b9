//! An event's time that only the database knows when it writes the row,
//! added to the payload as the relay publishes it ([`crate::WithEvents::occurred_at`]):
//! the row keeps the time in `created_at` and the payload's field number in
//! `occurred_at_field`, and the payload published is the stored one followed
//! by that field holding a `google.protobuf.Timestamp`. Protobuf readers
//! take fields in any order, so the caller encodes its message without it.
//! Encoded by SQL functions in the statement instead, it took about a fifth
//! of the time Postgres spent on Orders' statement writing one order.

use chrono::{DateTime, Utc};

/// The largest field number a row records (`occurred_at_field` is a `smallint`).
pub(crate) const MAX_FIELD: u32 = i16::MAX as u32;

/// Appends field `field` holding `at` as a `google.protobuf.Timestamp`, as
/// protobuf encoders write it: the key, the length, then seconds (field 1)
/// and nanos (field 2), each left out when 0.
pub(crate) fn append(payload: &mut Vec<u8>, field: u32, at: DateTime<Utc>) {
    let (seconds, nanos) = (at.timestamp(), at.timestamp_subsec_nanos());
    let mut body = Vec::with_capacity(16);
    if seconds != 0 {
        body.push(0x08);
        varint(&mut body, seconds as u64);
    }
    if nanos != 0 {
        body.push(0x10);
        varint(&mut body, u64::from(nanos));
    }
    varint(payload, u64::from(field) << 3 | 2);
    varint(payload, body.len() as u64);
    payload.extend_from_slice(&body);
}

/// `value` as a protobuf varint: seven bits a byte, low first, the high bit
/// set on every byte but the last (a negative `int64` is its 64-bit pattern).
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// The bytes are prost's for the same field, and a reader of a message
    /// without the field finds it after them.
    #[test]
    fn the_stamp_is_what_prost_encodes() {
        let instants = [
            "1970-01-01T00:00:00Z",
            "1970-01-01T00:00:01Z",
            "1970-01-01T00:00:00.5Z",
            "1970-01-01T00:02:08Z",
            "1969-12-31T23:59:59.999999Z",
            "2030-01-02T03:04:05Z",
            "2030-01-02T03:04:05.000001Z",
            "2026-12-07T19:30:00.123456Z",
            "9999-12-31T23:59:59.999999999Z",
        ];
        for at in instants.iter().map(|at| at.parse::<DateTime<Utc>>().unwrap()).chain([Utc::now()]) {
            for field in [1, 6, 15, 16, 2047, 2048, MAX_FIELD] {
                let mut ours = vec![0x0a, 0x01, b'x'];
                append(&mut ours, field, at);
                let mut theirs = vec![0x0a, 0x01, b'x'];
                let timestamp =
                    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 };
                prost::encoding::message::encode(field, &timestamp, &mut theirs);
                assert_eq!(ours, theirs, "{at} in field {field}");
            }
        }

        #[derive(Clone, PartialEq, prost::Message)]
        struct Event {
            #[prost(string, tag = "1")]
            name: String,
            #[prost(message, optional, tag = "6")]
            occurred_at: Option<prost_types::Timestamp>,
        }
        let at = "2026-12-07T19:30:00.123456Z".parse::<DateTime<Utc>>().unwrap();
        let mut payload = Event { name: "made".into(), occurred_at: None }.encode_to_vec();
        append(&mut payload, 6, at);
        let read = Event::decode(payload.as_slice()).unwrap();
        assert_eq!(read.name, "made");
        assert_eq!(read.occurred_at, Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 123_456_000 }));
    }
}
