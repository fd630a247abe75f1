//! OpenTelemetry tracing (`global.tracing`), with the SDK and its OTLP
//! exporter.
//!
//! - [`Telemetry`]: the tracer provider the configuration describes (or
//!   none), and the server span of each unary call ([`ServerSpan`]),
//!   started in [`crate::server`] as a child of the caller's span.
//! - [`action_spans`]: an observer of the action's facts that turns each
//!   finished action's typed outcome into an `action` span with one child
//!   per phase (prepare, spawn, run, measure, release).
//! - [`active_spans`]: the running actions, for the diagnostics server's
//!   `/active_spans`, kept with or without tracing.
//! - [`export`]: processors and exporter; spans dropped, counted by reason.
//! - [`message_attributes`]: `grpcServers[].tracing`, attributes from
//!   the calls' messages.
//! - [`sampler`], [`propagation`]: which traces are kept; the caller's
//!   trace from W3C or B3 metadata.
//!
//! Promise: spans never slow or fail an action. Spans are built from
//! facts after the fact, ending one only queues it, export runs on the
//! processor's thread, and a collector that is down costs only the spans
//! (counted in `rbe_runner_spans_dropped_total`).

pub mod action_spans;
pub mod active_spans;
pub mod export;
pub mod message_attributes;
pub mod propagation;
pub mod sampler;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tonic::metadata::MetadataMap;
use tonic::Code;

use crate::auth::metadata::AuthenticationMetadata;
use crate::config::{AttributeValue, TracingConfig};
use crate::trace_context::CallTrace;

pub use export::SpanDrops;

/// The instrumentation scope of every span the runner makes.
const SCOPE: &str = "rbe-runner";

/// How long shutdown waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why tracing could not be started; startup stops naming the field.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("global.tracing: otlpSpanExporter.address {0}")]
    Address(String),
    #[error("global.tracing: otlpSpanExporter.tls: {0}")]
    Tls(String),
    #[error("global.tracing: cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// The runner's tracing: a tracer when `global.tracing` is set.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    tracer: Option<SdkTracer>,
    drops: Arc<SpanDrops>,
}

impl Telemetry {
    /// No tracing: calls still pass the caller's trace on.
    pub fn off() -> Self {
        Telemetry {
            provider: None,
            tracer: None,
            drops: Arc::new(SpanDrops::default()),
        }
    }

    /// Tracing as `config` describes it; off when `None`. Call within the
    /// Tokio runtime, which carries the exporters' connections.
    pub fn start(config: Option<&TracingConfig>) -> Result<Self, TelemetryError> {
        let Some(config) = config else {
            return Ok(Telemetry::off());
        };
        let drops = Arc::new(SpanDrops::default());
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(sampler::RunnerSampler::new(&config.sampler))
            .with_resource(resource(config));
        for backend in &config.backends {
            builder = builder.with_span_processor(export::processor(backend, drops.clone())?);
        }
        let provider = builder.build();
        let tracer = provider.tracer(SCOPE);
        Ok(Telemetry {
            provider: Some(provider),
            tracer: Some(tracer),
            drops,
        })
    }

    /// The drop counters, for the metrics.
    pub fn drops(&self) -> Arc<SpanDrops> {
        self.drops.clone()
    }

    /// The tracer, when tracing is on.
    pub fn tracer(&self) -> Option<&SdkTracer> {
        self.tracer.as_ref()
    }

    /// Starts the server span of the unary call `method` (`Run`,
    /// `CheckReadiness`) of service `service`, as a child of the span the
    /// caller's `metadata` names. Without tracing, the caller's span is
    /// passed on as the call's trace, for logs and the journal.
    pub fn server_span(
        &self,
        service: &'static str,
        method: &'static str,
        metadata: &MetadataMap,
    ) -> ServerSpan {
        let caller = propagation::caller_span(metadata);
        let Some(tracer) = &self.tracer else {
            return ServerSpan {
                span: None,
                trace: caller.as_ref().map(call_trace),
                finished: false,
            };
        };
        let parent = propagation::parent_context(caller.as_ref());
        let span = tracer.build_with_context(
            SpanBuilder::from_name(format!("{service}/{method}"))
                .with_kind(SpanKind::Server)
                .with_attributes([
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", method),
                ]),
            &parent,
        );
        let trace = call_trace(opentelemetry::trace::Span::span_context(&span));
        ServerSpan {
            span: Some(span),
            trace: Some(trace),
            finished: false,
        }
    }

    /// Exports what is queued and stops the processors, waiting at most a
    /// few seconds. Blocking: call off the runtime's worker.
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider {
            if let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                tracing::warn!(%error, "tracing: spans still queued at shutdown were not all exported");
            }
        }
    }
}

/// `resourceAttributes`, with `service.name` `rbe-runner` unless given.
fn resource(config: &TracingConfig) -> Resource {
    let attributes = config
        .resource_attributes
        .iter()
        .map(|(key, value)| KeyValue::new(key.clone(), attribute_value(value)));
    let named = config
        .resource_attributes
        .iter()
        .any(|(key, _)| key == "service.name");
    let builder = Resource::builder_empty();
    let builder = if named {
        builder
    } else {
        builder.with_service_name(SCOPE)
    };
    builder.with_attributes(attributes).build()
}

/// A configured attribute value as OpenTelemetry's.
fn attribute_value(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::String(text) => Value::from(text.clone()),
        AttributeValue::Bool(flag) => Value::from(*flag),
        AttributeValue::Int(number) => Value::from(*number),
        AttributeValue::Double(number) => Value::from(*number),
    }
}

/// The span's ids as the runner's layers pass them along.
fn call_trace(span: &SpanContext) -> CallTrace {
    CallTrace {
        trace_id: span.trace_id().to_bytes(),
        span_id: span.span_id().to_bytes(),
        sampled: span.is_sampled(),
    }
}

/// The (local) context of `trace`'s span, to start its children in.
pub(crate) fn context_of(trace: &CallTrace) -> Context {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    let flags = if trace.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(trace.trace_id),
        SpanId::from_bytes(trace.span_id),
        flags,
        false,
        TraceState::default(),
    ))
}

/// The server span of one unary call; ends with the call's status, or as
/// cancelled when the call is dropped before it answers.
pub struct ServerSpan {
    span: Option<opentelemetry_sdk::trace::Span>,
    trace: Option<CallTrace>,
    finished: bool,
}

impl ServerSpan {
    /// The call's trace, for the runner chain.
    pub fn trace(&self) -> Option<CallTrace> {
        self.trace
    }

    /// Whether the span is recorded (tracing is on and the trace sampled).
    pub fn is_recording(&self) -> bool {
        use opentelemetry::trace::Span;
        self.span.as_ref().is_some_and(|span| span.is_recording())
    }

    /// Adds the caller's `tracingAttributes` (from its authentication
    /// policy) as `auth.<key>`, as Buildbarn's servers do.
    pub fn add_authentication(&mut self, metadata: Option<&AuthenticationMetadata>) {
        let Some(metadata) = metadata else { return };
        if metadata.tracing_attributes().is_empty() || !self.is_recording() {
            return;
        }
        let attributes = metadata
            .tracing_attributes()
            .iter()
            .map(|(key, value)| KeyValue::new(format!("auth.{key}"), attribute_value(value)))
            .collect();
        self.set_attributes(attributes);
    }

    /// Adds `attributes` to the span.
    pub fn set_attributes(&mut self, attributes: Vec<KeyValue>) {
        use opentelemetry::trace::Span;
        if let Some(span) = &mut self.span {
            span.set_attributes(attributes);
        }
    }

    /// Ends the span with the call's `code`; an error status (with
    /// `message`) for anything but OK.
    pub fn finish(mut self, code: Code, message: &str) {
        self.end(code, message);
    }

    fn end(&mut self, code: Code, message: &str) {
        use opentelemetry::trace::Span;
        self.finished = true;
        let Some(span) = &mut self.span else { return };
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
        if code != Code::Ok {
            span.set_status(Status::error(message.to_owned()));
        }
        span.end();
    }
}

impl Drop for ServerSpan {
    fn drop(&mut self) {
        if !self.finished {
            // The call's future was dropped: the client cancelled, or its
            // deadline passed.
            self.end(Code::Cancelled, "the call was dropped before it answered");
        }
    }
}
