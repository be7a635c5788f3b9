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
/// prost encodes a message field.
pub(crate) fn append(payload: &mut Vec<u8>, field: u32, at: DateTime<Utc>) {
    let timestamp = prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 };
    prost::encoding::message::encode(field, &timestamp, payload);
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// The field holds the instant as protobuf's Timestamp (seconds since
    /// the epoch, floored, and the nanoseconds past them), whatever the
    /// field number, and a reader of a message without the field finds it
    /// after the message's own bytes.
    #[test]
    fn the_stamp_is_the_timestamp_in_its_field() {
        let instants = [
            ("1970-01-01T00:00:00Z", 0, 0),
            ("1970-01-01T00:00:01Z", 1, 0),
            ("1970-01-01T00:00:00.5Z", 0, 500_000_000),
            ("1970-01-01T00:02:08Z", 128, 0),
            ("1969-12-31T23:59:59.999999Z", -1, 999_999_000),
            ("2030-01-02T03:04:05Z", 1_893_553_445, 0),
            ("2030-01-02T03:04:05.000001Z", 1_893_553_445, 1_000),
            ("9999-12-31T23:59:59.999999999Z", 253_402_300_799, 999_999_999),
        ];
        for (at, seconds, nanos) in instants {
            for field in [1, 6, 15, 16, 2047, 2048, MAX_FIELD] {
                let mut payload = vec![0x0a, 0x01, b'x'];
                append(&mut payload, field, at.parse().unwrap());
                let mut rest = &payload[3..];
                let (key, wire) = prost::encoding::decode_key(&mut rest).unwrap();
                assert_eq!((key, wire), (field, prost::encoding::WireType::LengthDelimited), "{at} in field {field}");
                let read = prost_types::Timestamp::decode_length_delimited(&mut rest).unwrap();
                assert_eq!((read.seconds, read.nanos), (seconds, nanos), "{at} in field {field}");
                assert!(rest.is_empty(), "{at} in field {field}: nothing after the field");
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
