//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` that ties the spans
//! of one saga into one trace. It comes in with the HTTP request (or is started there), and travels in
//! the `traceparent` header of every event the saga publishes, so a tracing backend, the logs
//! (`trace_id`) and `orderflow trace` all see one saga as one trace across the three services.

use std::fmt;

/// The `traceparent` header, on HTTP requests and on NATS messages alike.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A trace id: 16 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(u128);

/// A span id: 8 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(u64);

impl TraceId {
    fn random() -> Self {
        // A v4 UUID is 122 random bits from the OS generator, which is all a trace id needs; the
        // fixed version bits do not make it any less unique.
        Self(uuid::Uuid::new_v4().as_u128())
    }
}

impl SpanId {
    fn random() -> Self {
        let bits = uuid::Uuid::new_v4().as_u64_pair().1;
        // The low half of a v4 UUID has 62 random bits; zero is not a valid span id.
        Self(bits.max(1))
    }
}

/// The 32 lowercase hex digits, as logs and tracing backends show it.
impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One span's place in a trace: the trace it belongs to, its own id, and whether the caller chose to
/// record it (the `sampled` flag, passed on unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// Why a `traceparent` was not used (a new trace is started instead: a bad header from a client must
/// not fail its request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("traceparent must be 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>, not zero ids")]
pub struct InvalidTraceparent;

impl TraceContext {
    /// The first span of a new trace.
    pub fn new_root() -> Self {
        Self {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            sampled: true,
        }
    }

    /// A span context from the raw ids another tracing library gave it; `None` for a zero id.
    pub fn from_ids(trace_id: u128, span_id: u64, sampled: bool) -> Option<Self> {
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id: TraceId(trace_id),
            span_id: SpanId(span_id),
            sampled,
        })
    }

    /// The trace id as 16 bytes (big-endian), as OpenTelemetry takes it.
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id.0.to_be_bytes()
    }

    /// The span id as 8 bytes (big-endian).
    pub fn span_id_bytes(&self) -> [u8; 8] {
        self.span_id.0.to_be_bytes()
    }

    /// A span under this one: the same trace, a new span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: SpanId::random(),
            ..*self
        }
    }

    /// Reads a `traceparent` header. Version 00 is read exactly; a later version is read by its first
    /// four fields, as the specification asks, so a newer caller still joins its trace.
    pub fn parse(header: &str) -> Result<Self, InvalidTraceparent> {
        let header = header.trim();
        let mut fields = header.split('-');
        let (Some(version), Some(trace_id), Some(span_id), Some(flags)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(InvalidTraceparent);
        };
        let rest = fields.next();
        let hex = |text: &str, len: usize| {
            text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let known_layout = version == "00" && rest.is_none();
        let later_version = hex(version, 2) && version != "00" && version != "ff";
        if !(known_layout || later_version)
            || !hex(trace_id, 32)
            || !hex(span_id, 16)
            || !hex(flags, 2)
        {
            return Err(InvalidTraceparent);
        }
        let trace_id = u128::from_str_radix(trace_id, 16).map_err(|_| InvalidTraceparent)?;
        let span_id = u64::from_str_radix(span_id, 16).map_err(|_| InvalidTraceparent)?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| InvalidTraceparent)?;
        if trace_id == 0 || span_id == 0 {
            return Err(InvalidTraceparent);
        }
        Ok(Self {
            trace_id: TraceId(trace_id),
            span_id: SpanId(span_id),
            sampled: flags & 1 == 1,
        })
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_round_trips() {
        let context = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(
            context.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id.to_string(), "00f067aa0ba902b7");
        assert!(context.sampled);
        assert_eq!(context.to_string(), EXAMPLE);
    }

    #[test]
    fn raw_ids_round_trip_through_bytes() {
        let context = TraceContext::parse(EXAMPLE).unwrap();
        let again = TraceContext::from_ids(
            u128::from_be_bytes(context.trace_id_bytes()),
            u64::from_be_bytes(context.span_id_bytes()),
            true,
        );
        assert_eq!(again, Some(context));
        assert_eq!(TraceContext::from_ids(0, 1, true), None);
    }

    #[test]
    fn a_child_keeps_the_trace_and_takes_a_new_span() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_eq!(TraceContext::parse(&child.to_string()), Ok(child));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), Err(InvalidTraceparent), "{bad}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let context =
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more")
                .unwrap();
        assert!(!context.sampled);
        assert!(context.to_string().starts_with("00-"));
    }
}
