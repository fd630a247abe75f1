//! The caller's trace, from an incoming call's metadata: W3C
//! `traceparent`/`tracestate`, or else B3 (the single `b3` header, or the
//! `x-b3-*` headers). bb-storage's clients send both; either one makes
//! the runner's span a child of bb_worker's.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::MetadataMap;

/// The caller's span, when its metadata names a valid one.
pub fn caller_span(metadata: &MetadataMap) -> Option<SpanContext> {
    w3c(metadata).or_else(|| b3(metadata))
}

/// A context whose (remote) parent is `span`, or an empty one.
pub fn parent_context(span: Option<&SpanContext>) -> Context {
    match span {
        Some(span) => Context::new().with_remote_span_context(span.clone()),
        None => Context::new(),
    }
}

struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

fn w3c(metadata: &MetadataMap) -> Option<SpanContext> {
    let context = TraceContextPropagator::new().extract(&Metadata(metadata));
    let span = context.span().span_context().clone();
    span.is_valid().then_some(span)
}

fn header<'a>(metadata: &'a MetadataMap, name: &str) -> Option<&'a str> {
    metadata.get(name).and_then(|value| value.to_str().ok())
}

fn b3(metadata: &MetadataMap) -> Option<SpanContext> {
    if let Some(single) = header(metadata, "b3") {
        return b3_single(single);
    }
    let trace_id = b3_trace_id(header(metadata, "x-b3-traceid")?)?;
    let span_id = b3_span_id(header(metadata, "x-b3-spanid")?)?;
    let debug = header(metadata, "x-b3-flags") == Some("1");
    let sampled = debug || matches!(header(metadata, "x-b3-sampled"), Some("1" | "true"));
    Some(remote_span(trace_id, span_id, sampled))
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`; a sampling
/// decision alone (`0`, `1`, `d`) names no span.
fn b3_single(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let sampled = matches!(parts.next(), Some("1" | "d"));
    Some(remote_span(trace_id, span_id, sampled))
}

/// A 64- or 128-bit hex trace id; a 64-bit one is the low half.
fn b3_trace_id(text: &str) -> Option<TraceId> {
    if !(text.len() == 16 || text.len() == 32) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = TraceId::from_hex(text).ok()?;
    (id != TraceId::INVALID).then_some(id)
}

fn b3_span_id(text: &str) -> Option<SpanId> {
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = SpanId::from_hex(text).ok()?;
    (id != SpanId::INVALID).then_some(id)
}

fn remote_span(trace_id: TraceId, span_id: SpanId, sampled: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(trace_id, span_id, flags, true, TraceState::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in pairs {
            map.insert(*key, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn traceparent_names_the_callers_span() {
        // Why it matters: this is how bb_worker's span becomes the parent.
        let span = caller_span(&metadata(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]))
        .expect("a span");
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span.is_sampled() && span.is_remote());
    }

    #[test]
    fn b3_in_either_form_names_the_callers_span() {
        // Why it matters: Buildbarn's propagator sends B3 too, and a
        // caller that sends only B3 must still be joined.
        let single = caller_span(&metadata(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .expect("a span");
        assert_eq!(single.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(single.is_sampled());
        let multi = caller_span(&metadata(&[
            ("x-b3-traceid", "e457b5a2e4d86bd1"),
            ("x-b3-spanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "0"),
        ]))
        .expect("a span");
        assert_eq!(
            multi.trace_id().to_string(),
            "0000000000000000e457b5a2e4d86bd1"
        );
        assert!(!multi.is_sampled());
    }

    #[test]
    fn malformed_or_missing_context_starts_a_new_trace() {
        // Why it matters: a bad header must never fail or poison a call.
        for pairs in [
            vec![],
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
            vec![("traceparent", "garbage")],
            vec![("b3", "1")],
            vec![("x-b3-traceid", "xyz"), ("x-b3-spanid", "05e3ac9a4f6e3b90")],
        ] {
            assert!(caller_span(&metadata(&pairs)).is_none(), "{pairs:?}");
        }
    }
}
