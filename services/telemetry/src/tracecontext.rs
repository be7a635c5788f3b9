//! W3C trace context (`traceparent`): continued from an incoming request when
//! well-formed, started afresh otherwise, and carried in outbox rows and AMQP
//! headers so one order can be followed across services.

use std::fmt;

use rand::Rng;

/// gRPC metadata key and AMQP header name.
pub const HEADER: &str = "traceparent";

/// A version-00 `traceparent`: trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid.
    pub fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if parts.next().is_some()
            || version != "00"
            || !lower_hex(trace, 32)
            || !lower_hex(span, 16)
            || !lower_hex(flags, 2)
        {
            return None;
        }
        let parsed = Self {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.span_id != 0).then_some(parsed)
    }

    /// A new sampled trace.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        Self { trace_id: rng.random_range(1..=u128::MAX), span_id: rng.random_range(1..=u64::MAX), flags: 1 }
    }

    /// The same trace with a new span id: the context a child operation passes on.
    pub fn child(self) -> Self {
        Self { span_id: rand::rng().random_range(1..=u64::MAX), ..self }
    }

    /// Continues `incoming` when well-formed, else starts a new trace.
    pub fn continue_or_start(incoming: Option<&str>) -> Self {
        incoming.and_then(Self::parse).map_or_else(Self::new_root, Self::child)
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_continues_a_w3c_traceparent() {
        let raw = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(raw).unwrap();
        assert_eq!(parsed.to_string(), raw);
        let child = TraceParent::continue_or_start(Some(raw));
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.span_id, parsed.span_id);
    }

    #[test]
    fn rejects_malformed_values_and_starts_a_new_trace() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let fresh = TraceParent::continue_or_start(Some("garbage"));
        assert!(TraceParent::parse(&fresh.to_string()).is_some());
    }
}
