//! `global.tracing` (bb-storage's `TracingConfiguration`): where the
//! runner's OpenTelemetry spans go (`backends`: an OTLP/gRPC exporter with
//! a batch or simple span processor), what the runner says about itself
//! (`resourceAttributes`) and which traces are kept (`sampler`).
//!
//! What rbe-runner cannot do is refused by name: the deprecated Jaeger
//! exporter, a blocking batch processor (spans must never slow an action),
//! and the parts of a gRPC client configuration that need machinery the
//! runner does not have (OAuth, proxies, JMESPath metadata, service
//! configs, tracing of the exporter's own calls).

use std::fmt;
use std::time::Duration;

use crate::config::duration::format_duration;
use crate::config::protojson::{
    child_path, optional, repeated, Decoded, Field, FieldError, Message,
};

use super::tls::{decode_tls_client, TlsClientConfig};

/// `global.tracing`.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// `backends`: each exports every sampled span.
    pub backends: Vec<TracingBackend>,
    /// `resourceAttributes`: announced with every span, in order.
    pub resource_attributes: Vec<(String, AttributeValue)>,
    /// `sampler`: which traces are kept. Unset: parent-based, sampling
    /// new traces always (OpenTelemetry's default).
    pub sampler: SamplerConfig,
}

/// One `backends` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingBackend {
    /// `otlpSpanExporter`.
    pub exporter: OtlpExporterConfig,
    /// `batchSpanProcessor` or `simpleSpanProcessor`.
    pub processor: SpanProcessorConfig,
}

/// `otlpSpanExporter`: a Buildbarn gRPC client configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OtlpExporterConfig {
    /// `address`: `host:port`, or `unix:///path` for a Unix socket.
    pub address: String,
    /// `tls`: TLS when set.
    pub tls: Option<TlsClientConfig>,
    /// `keepalive`: HTTP/2 PINGs every `time`, answered within `timeout`.
    pub keepalive: Option<ClientKeepalive>,
    /// `addMetadata`: headers sent with every export, in order.
    pub add_metadata: Vec<(String, Vec<String>)>,
    /// `initialWindowSizeBytes`, when set.
    pub initial_window_size_bytes: Option<u32>,
    /// `initialConnWindowSizeBytes`, when set.
    pub initial_conn_window_size_bytes: Option<u32>,
}

/// `keepalive` of a client configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientKeepalive {
    /// `time`: with no activity for this long, the client PINGs.
    pub time: Option<Duration>,
    /// `timeout`: how long the PING's answer may take.
    pub timeout: Option<Duration>,
    /// `permitWithoutStream`: PING even with no call open.
    pub permit_without_stream: bool,
}

/// How finished spans reach the exporter. Both export from a background
/// thread, so ending a span never waits for the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanProcessorConfig {
    /// `simpleSpanProcessor`: one span at a time, as soon as it ends.
    Simple,
    /// `batchSpanProcessor`.
    Batch(BatchSettings),
}

/// `batchSpanProcessor`; a field left out (or zero) is OpenTelemetry's
/// default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchSettings {
    /// `batchTimeout`: the longest a span waits to be sent.
    pub batch_timeout: Option<Duration>,
    /// `exportTimeout`: how long one export may take.
    pub export_timeout: Option<Duration>,
    /// `maxExportBatchSize`: spans per export.
    pub max_export_batch_size: Option<usize>,
    /// `maxQueueSize`: spans waiting; more are dropped (and counted).
    pub max_queue_size: Option<usize>,
}

/// A `resourceAttributes` value (OpenTelemetry's `AnyValue`, scalars).
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    String(String),
    Bool(bool),
    Int(i64),
    Double(f64),
}

/// `sampler` (bb-storage's `Sampler` policy oneof).
#[derive(Debug, Clone, PartialEq)]
pub enum SamplerConfig {
    /// `always`.
    Always,
    /// `never`.
    Never,
    /// `parentBased`: a sampler for each kind of parent; unset ones are
    /// OpenTelemetry's defaults (follow the parent's decision).
    ParentBased(Box<ParentBasedConfig>),
    /// `traceIdRatioBased`: this fraction of trace ids, clamped to [0, 1].
    TraceIdRatioBased(f64),
    /// `maximumRate`: at most `samples_per_epoch` per `epoch_duration`.
    MaximumRate {
        samples_per_epoch: u64,
        epoch_duration: Duration,
    },
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig::ParentBased(Box::new(ParentBasedConfig {
            no_parent: SamplerConfig::Always,
            local_parent_not_sampled: None,
            local_parent_sampled: None,
            remote_parent_not_sampled: None,
            remote_parent_sampled: None,
        }))
    }
}

/// `parentBased`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentBasedConfig {
    /// `noParent`: for a new trace (required).
    pub no_parent: SamplerConfig,
    /// `localParentNotSampled`; default never.
    pub local_parent_not_sampled: Option<SamplerConfig>,
    /// `localParentSampled`; default always.
    pub local_parent_sampled: Option<SamplerConfig>,
    /// `remoteParentNotSampled`; default never.
    pub remote_parent_not_sampled: Option<SamplerConfig>,
    /// `remoteParentSampled`; default always.
    pub remote_parent_sampled: Option<SamplerConfig>,
}

/// Parts of a gRPC client configuration the exporter cannot honour, and
/// why; refused by name rather than ignored.
const REFUSED_CLIENT_FIELDS: &[(&str, &str)] = &[
    ("oauth", "OAuth credentials are not implemented; use addMetadata with a static `authorization` header"),
    ("oauth2", "OAuth credentials are not implemented; use addMetadata with a static `authorization` header"),
    ("proxy_url", "connecting through a proxy is not implemented"),
    ("add_metadata_jmespath_expression", "the exporter's calls have no incoming call to take metadata from; use addMetadata"),
    ("default_service_config", "gRPC service configs are not implemented"),
    ("tracing", "the exporter's own calls are not traced"),
    ("forward_metadata", "the exporter's calls have no incoming call to forward metadata from; use addMetadata"),
    ("forward_and_reuse_metadata", "the exporter's calls have no incoming call to forward metadata from; use addMetadata"),
];

/// Decodes `global.tracing`.
pub(super) fn decode_tracing(mut message: Message) -> Decoded<TracingConfig> {
    let backends = repeated(message.take("backends")?, decode_backend)?;
    let resource_attributes = repeated(
        message.take("resource_attributes")?,
        decode_resource_attribute,
    )?;
    let sampler = match message.take("sampler")? {
        Some(field) => decode_sampler(field.message()?)?,
        None => SamplerConfig::default(),
    };
    message.finish()?;
    Ok(TracingConfig {
        backends,
        resource_attributes,
        sampler,
    })
}

fn decode_backend(field: Field) -> Decoded<TracingBackend> {
    let mut message = field.message()?;
    message.reject(
        "jaeger_collector_span_exporter",
        "the Jaeger exporter is deprecated upstream and not implemented; Jaeger accepts \
         OTLP natively: use otlpSpanExporter",
    )?;
    let exporter = message.take("otlp_span_exporter")?;
    let simple = message.take("simple_span_processor")?;
    let batch = message.take("batch_span_processor")?;
    let path = message.path.clone();
    message.finish()?;
    let Some(exporter) = exporter else {
        return Err(FieldError::missing(
            &child_path(&path, "otlpSpanExporter"),
            "a backend needs an exporter: `otlpSpanExporter: { address: 'collector:4317' }`",
        ));
    };
    let exporter = decode_otlp_exporter(exporter.message()?)?;
    let processor = match (simple, batch) {
        (Some(simple), None) => {
            simple.message()?.finish()?;
            SpanProcessorConfig::Simple
        }
        (None, Some(batch)) => SpanProcessorConfig::Batch(decode_batch(batch.message()?)?),
        (Some(_), Some(batch)) => {
            return Err(FieldError::invalid(
                &batch.path,
                "set either simpleSpanProcessor or batchSpanProcessor, not both",
            ))
        }
        (None, None) => {
            return Err(FieldError::missing(
                &child_path(&path, "batchSpanProcessor"),
                "a backend needs a span processor: `batchSpanProcessor: {}` or \
                 `simpleSpanProcessor: {}`",
            ))
        }
    };
    Ok(TracingBackend {
        exporter,
        processor,
    })
}

fn decode_otlp_exporter(mut message: Message) -> Decoded<OtlpExporterConfig> {
    for (name, reason) in REFUSED_CLIENT_FIELDS {
        message.reject(name, reason)?;
    }
    let path = message.path.clone();
    let address = optional(message.take("address")?, Field::string)?;
    let tls = message.take("tls")?.map(decode_tls_client).transpose()?;
    let keepalive = message
        .take("keepalive")?
        .map(|field| decode_keepalive(field.message()?))
        .transpose()?;
    let add_metadata = repeated(message.take("add_metadata")?, decode_header_values)?;
    let initial_window_size_bytes = window_size(message.take("initial_window_size_bytes")?)?;
    let initial_conn_window_size_bytes =
        window_size(message.take("initial_conn_window_size_bytes")?)?;
    message.finish()?;
    if address.is_empty() {
        return Err(FieldError::missing(
            &child_path(&path, "address"),
            "the collector's address, e.g. 'otel-collector:4317' or 'unix:///run/otel.sock'",
        ));
    }
    Ok(OtlpExporterConfig {
        address,
        tls,
        keepalive,
        add_metadata,
        initial_window_size_bytes,
        initial_conn_window_size_bytes,
    })
}

fn window_size(field: Option<Field>) -> Decoded<Option<u32>> {
    let Some(field) = field else { return Ok(None) };
    let value = field.int64()?;
    Ok(u32::try_from(value).ok().filter(|value| *value > 0))
}

fn decode_keepalive(mut message: Message) -> Decoded<ClientKeepalive> {
    let time = optional(message.take("time")?, |field| field.duration().map(Some))?;
    let timeout = optional(message.take("timeout")?, |field| field.duration().map(Some))?;
    let permit_without_stream = optional(message.take("permit_without_stream")?, Field::bool)?;
    message.finish()?;
    Ok(ClientKeepalive {
        time: time.filter(|time| !time.is_zero()),
        timeout: timeout.filter(|timeout| !timeout.is_zero()),
        permit_without_stream,
    })
}

fn decode_header_values(field: Field) -> Decoded<(String, Vec<String>)> {
    let mut message = field.message()?;
    let header = message.take("header")?;
    let values = repeated(message.take("values")?, Field::string)?;
    let path = message.path.clone();
    message.finish()?;
    let header_path = child_path(&path, "header");
    let header = optional(header, Field::string)?;
    if header.is_empty()
        || header.starts_with("grpc-")
        || http::HeaderName::from_bytes(header.as_bytes()).is_err()
        || header.bytes().any(|byte| byte.is_ascii_uppercase())
    {
        return Err(FieldError::invalid(
            &header_path,
            format!("{header:?} is not a lower-case gRPC metadata name"),
        ));
    }
    for (index, value) in values.iter().enumerate() {
        let valid = if header.ends_with("-bin") {
            true
        } else {
            http::HeaderValue::from_str(value).is_ok()
        };
        if !valid {
            return Err(FieldError::invalid(
                &format!("{}[{index}]", child_path(&path, "values")),
                "not a valid metadata value (printable ASCII)",
            ));
        }
    }
    Ok((header, values))
}

fn decode_batch(mut message: Message) -> Decoded<BatchSettings> {
    if let Some(field) = message.take("blocking")? {
        let path = field.path.clone();
        if field.bool()? {
            return Err(FieldError::unsupported(
                &path,
                "a blocking processor would make actions wait for the collector; rbe-runner \
                 drops spans when its queue is full and counts them in \
                 rbe_runner_spans_dropped_total (raise maxQueueSize instead)",
            ));
        }
    }
    let nonzero = |field: Option<Field>| -> Decoded<Option<Duration>> {
        Ok(optional(field, |field| field.duration().map(Some))?.filter(|d| !d.is_zero()))
    };
    let batch_timeout = nonzero(message.take("batch_timeout")?)?;
    let export_timeout = nonzero(message.take("export_timeout")?)?;
    let count = |field: Option<Field>| -> Decoded<Option<usize>> {
        let Some(field) = field else { return Ok(None) };
        let path = field.path.clone();
        let value = field.int64()?;
        if value < 0 {
            return Err(FieldError::invalid(&path, "must not be negative"));
        }
        Ok(usize::try_from(value).ok().filter(|value| *value > 0))
    };
    let max_export_batch_size = count(message.take("max_export_batch_size")?)?;
    let max_queue_size = count(message.take("max_queue_size")?)?;
    message.finish()?;
    Ok(BatchSettings {
        batch_timeout,
        export_timeout,
        max_export_batch_size,
        max_queue_size,
    })
}

fn decode_resource_attribute(field: Field) -> Decoded<(String, AttributeValue)> {
    let mut message = field.message()?;
    let path = message.path.clone();
    let key = optional(message.take("key")?, Field::string)?;
    let value = message.take("value")?;
    message.finish()?;
    if key.is_empty() {
        return Err(FieldError::missing(
            &child_path(&path, "key"),
            "an attribute needs a key, e.g. 'service.name'",
        ));
    }
    let Some(value) = value else {
        return Err(FieldError::missing(
            &child_path(&path, "value"),
            "an attribute needs a value, e.g. `{ stringValue: 'rbe-runner' }`",
        ));
    };
    Ok((key, decode_any_value(value.message()?)?))
}

/// OpenTelemetry's `AnyValue`: one scalar of its oneof.
fn decode_any_value(mut message: Message) -> Decoded<AttributeValue> {
    for name in ["array_value", "kvlist_value", "bytes_value"] {
        message.reject(
            name,
            "only scalar attribute values (string, bool, int, double) are supported",
        )?;
    }
    let path = message.path.clone();
    let mut values = Vec::new();
    if let Some(field) = message.take("string_value")? {
        values.push(AttributeValue::String(field.string()?));
    }
    if let Some(field) = message.take("bool_value")? {
        values.push(AttributeValue::Bool(field.bool()?));
    }
    if let Some(field) = message.take("int_value")? {
        values.push(AttributeValue::Int(field.int64()?));
    }
    if let Some(field) = message.take("double_value")? {
        values.push(AttributeValue::Double(double(field)?));
    }
    message.finish()?;
    match values.len() {
        1 => Ok(values.remove(0)),
        0 => Err(FieldError::missing(
            &path,
            "set one of stringValue, boolValue, intValue, doubleValue",
        )),
        _ => Err(FieldError::invalid(
            &path,
            "set only one of stringValue, boolValue, intValue, doubleValue",
        )),
    }
}

/// A protobuf `double`: a number, or one written as a string.
fn double(field: Field) -> Decoded<f64> {
    field.parsed("a number", |text| {
        text.parse::<f64>()
            .ok()
            .filter(|value| value.is_finite())
            .ok_or_else(|| format!("{text:?} is not a finite number"))
    })
}

fn decode_sampler(mut message: Message) -> Decoded<SamplerConfig> {
    let path = message.path.clone();
    let mut policies = Vec::new();
    if let Some(field) = message.take("always")? {
        field.message()?.finish()?;
        policies.push(SamplerConfig::Always);
    }
    if let Some(field) = message.take("never")? {
        field.message()?.finish()?;
        policies.push(SamplerConfig::Never);
    }
    if let Some(field) = message.take("parent_based")? {
        policies.push(SamplerConfig::ParentBased(Box::new(decode_parent_based(
            field.message()?,
        )?)));
    }
    if let Some(field) = message.take("trace_id_ratio_based")? {
        policies.push(SamplerConfig::TraceIdRatioBased(
            double(field)?.clamp(0.0, 1.0),
        ));
    }
    if let Some(field) = message.take("maximum_rate")? {
        policies.push(decode_maximum_rate(field.message()?)?);
    }
    message.finish()?;
    match policies.len() {
        1 => Ok(policies.remove(0)),
        0 => Err(FieldError::missing(
            &path,
            "set one policy: always, never, parentBased, traceIdRatioBased or maximumRate",
        )),
        _ => Err(FieldError::invalid(&path, "set only one policy")),
    }
}

fn decode_parent_based(mut message: Message) -> Decoded<ParentBasedConfig> {
    let path = message.path.clone();
    let mut sub = |name: &str| -> Decoded<Option<SamplerConfig>> {
        message
            .take(name)?
            .map(|field| decode_sampler(field.message()?))
            .transpose()
    };
    let no_parent = sub("no_parent")?;
    let local_parent_not_sampled = sub("local_parent_not_sampled")?;
    let local_parent_sampled = sub("local_parent_sampled")?;
    let remote_parent_not_sampled = sub("remote_parent_not_sampled")?;
    let remote_parent_sampled = sub("remote_parent_sampled")?;
    message.finish()?;
    let Some(no_parent) = no_parent else {
        return Err(FieldError::missing(
            &child_path(&path, "noParent"),
            "the sampler for new traces, e.g. `noParent: { always: {} }`",
        ));
    };
    Ok(ParentBasedConfig {
        no_parent,
        local_parent_not_sampled,
        local_parent_sampled,
        remote_parent_not_sampled,
        remote_parent_sampled,
    })
}

fn decode_maximum_rate(mut message: Message) -> Decoded<SamplerConfig> {
    let path = message.path.clone();
    let samples = message.take("samples_per_epoch")?;
    let epoch = message.take("epoch_duration")?;
    message.finish()?;
    let samples_path = child_path(&path, "samplesPerEpoch");
    let samples_per_epoch = optional(samples, Field::int64)?;
    let samples_per_epoch = u64::try_from(samples_per_epoch)
        .map_err(|_| FieldError::invalid(&samples_path, "must not be negative"))?;
    let epoch_duration = optional(epoch, |field| field.duration().map(Some))?;
    let Some(epoch_duration) = epoch_duration.filter(|epoch| !epoch.is_zero()) else {
        return Err(FieldError::missing(
            &child_path(&path, "epochDuration"),
            "the length of an epoch, e.g. '1s'",
        ));
    };
    Ok(SamplerConfig::MaximumRate {
        samples_per_epoch,
        epoch_duration,
    })
}

/// `grpcServers[].tracing` (bb-storage's `TracingMethodConfiguration`
/// per full method name): fields of the first request and response
/// message that become attributes of the call's server span, as
/// `request.<field>` and `response.<field>`. Only the unary Runner calls
/// have server spans, so only their fields can be named.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerTracingConfig {
    /// `/buildbarn.runner.Runner/Run`: `RunRequest` fields.
    pub run_request: Vec<String>,
    /// `/buildbarn.runner.Runner/Run`: `RunResponse` fields.
    pub run_response: Vec<String>,
    /// `/buildbarn.runner.Runner/CheckReadiness`: `CheckReadinessRequest`
    /// fields.
    pub check_readiness_request: Vec<String>,
}

/// The full method name of Run, as the `tracing` map keys it.
pub const RUN_METHOD: &str = "/buildbarn.runner.Runner/Run";
/// The full method name of CheckReadiness.
pub const CHECK_READINESS_METHOD: &str = "/buildbarn.runner.Runner/CheckReadiness";

/// The fields of `RunRequest` that can become attributes (scalars and
/// repeated scalars; the environment map cannot).
pub const RUN_REQUEST_FIELDS: &[&str] = &[
    "arguments",
    "working_directory",
    "stdout_path",
    "stderr_path",
    "input_root_directory",
    "temporary_directory",
    "server_logs_directory",
];
/// The fields of `RunResponse` that can (`resource_usage` holds `Any`s).
pub const RUN_RESPONSE_FIELDS: &[&str] = &["exit_code"];
/// The fields of `CheckReadinessRequest` that can.
pub const CHECK_READINESS_REQUEST_FIELDS: &[&str] = &["path"];

pub(super) fn decode_server_tracing(field: Field) -> Decoded<ServerTracingConfig> {
    let mut map = field.message()?;
    let mut config = ServerTracingConfig::default();
    while let Some(key) = map.first_key().map(str::to_owned) {
        let path = child_path(&map.path, &key);
        let Some(field) = map.take(&key)? else {
            continue;
        };
        let mut method = field.message()?;
        let request = method.take("attributes_from_first_request_message")?;
        let response = method.take("attributes_from_first_response_message")?;
        method.finish()?;
        let (request_fields, response_fields) = match key.as_str() {
            RUN_METHOD => (RUN_REQUEST_FIELDS, RUN_RESPONSE_FIELDS),
            CHECK_READINESS_METHOD => (CHECK_READINESS_REQUEST_FIELDS, &[][..]),
            _ => {
                return Err(FieldError::unsupported(
                    &path,
                    format!(
                        "only the unary Runner calls have server spans: use {RUN_METHOD:?} or \
                         {CHECK_READINESS_METHOD:?}"
                    ),
                ))
            }
        };
        let names = |field: Option<Field>, known: &[&str]| -> Decoded<Vec<String>> {
            let Some(field) = field else {
                return Ok(Vec::new());
            };
            let list_path = field.path.clone();
            let names = repeated(Some(field), Field::string)?;
            for (index, name) in names.iter().enumerate() {
                if !known.contains(&name.as_str()) {
                    return Err(FieldError::invalid(
                        &format!("{list_path}[{index}]"),
                        format!(
                            "{name:?} is not a field that can become an attribute; expected one of: {}",
                            if known.is_empty() { "none (the response is empty)".to_owned() } else { known.join(", ") }
                        ),
                    ));
                }
            }
            Ok(names)
        };
        let request = names(request, request_fields)?;
        let response = names(response, response_fields)?;
        if key == RUN_METHOD {
            config.run_request = request;
            config.run_response = response;
        } else {
            config.check_readiness_request = request;
        }
    }
    Ok(config)
}

impl fmt::Display for SamplerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SamplerConfig::Always => f.write_str("always"),
            SamplerConfig::Never => f.write_str("never"),
            SamplerConfig::ParentBased(parent) => {
                write!(f, "parentBased(noParent: {}", parent.no_parent)?;
                for (name, sampler) in [
                    ("localParentNotSampled", &parent.local_parent_not_sampled),
                    ("localParentSampled", &parent.local_parent_sampled),
                    ("remoteParentNotSampled", &parent.remote_parent_not_sampled),
                    ("remoteParentSampled", &parent.remote_parent_sampled),
                ] {
                    if let Some(sampler) = sampler {
                        write!(f, ", {name}: {sampler}")?;
                    }
                }
                f.write_str(")")
            }
            SamplerConfig::TraceIdRatioBased(ratio) => write!(f, "traceIdRatioBased({ratio})"),
            SamplerConfig::MaximumRate {
                samples_per_epoch,
                epoch_duration,
            } => write!(
                f,
                "maximumRate({samples_per_epoch} per {})",
                format_duration(*epoch_duration)
            ),
        }
    }
}

impl fmt::Display for TracingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|backend| {
                let processor = match backend.processor {
                    SpanProcessorConfig::Simple => "simple",
                    SpanProcessorConfig::Batch(_) => "batch",
                };
                let tls = if backend.exporter.tls.is_some() {
                    " (TLS)"
                } else {
                    ""
                };
                format!("otlp {}{tls}, {processor}", backend.exporter.address)
            })
            .collect();
        write!(
            f,
            "backends [{}], sampler {}, {} resource attributes",
            backends.join("; "),
            self.sampler,
            self.resource_attributes.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::load_with;

    fn tracing(text: &str) -> TracingConfig {
        load_with(&format!("global: {{ tracing: {text} }}"))
            .expect("decodes")
            .global
            .tracing
            .expect("tracing is set")
    }

    fn refused(text: &str) -> String {
        load_with(&format!("global: {{ tracing: {text} }}"))
            .expect_err(text)
            .to_string()
    }

    #[test]
    fn an_otlp_backend_with_a_batch_processor_and_metadata() {
        // The shape bb-deployments writes, which must be taken as is.
        let config = tracing(
            "{ backends: [{ otlpSpanExporter: { address: 'collector:4317',
                 addMetadata: [{ header: 'x-tenant', values: ['a', 'b'] }],
                 keepalive: { time: '30s', timeout: '5s' } },
               batchSpanProcessor: { maxQueueSize: 10, batchTimeout: '1s' } }],
               resourceAttributes: [{ key: 'service.name', value: { stringValue: 'runner' } },
                                    { key: 'shard', value: { intValue: '3' } }],
               sampler: { maximumRate: { samplesPerEpoch: 2, epochDuration: '60s' } } }",
        );
        let backend = &config.backends[0];
        assert_eq!(backend.exporter.address, "collector:4317");
        assert_eq!(
            backend.exporter.add_metadata,
            vec![("x-tenant".to_owned(), vec!["a".to_owned(), "b".to_owned()])]
        );
        assert_eq!(
            backend.exporter.keepalive.unwrap().time,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            backend.processor,
            SpanProcessorConfig::Batch(BatchSettings {
                batch_timeout: Some(Duration::from_secs(1)),
                max_queue_size: Some(10),
                ..BatchSettings::default()
            })
        );
        assert_eq!(
            config.resource_attributes,
            vec![
                (
                    "service.name".to_owned(),
                    AttributeValue::String("runner".to_owned())
                ),
                ("shard".to_owned(), AttributeValue::Int(3)),
            ]
        );
        assert_eq!(
            config.sampler,
            SamplerConfig::MaximumRate {
                samples_per_epoch: 2,
                epoch_duration: Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        // An operator must learn at startup, naming the field, rather than
        // find spans missing or actions slowed.
        for (text, path) in [
            (
                "{ backends: [{ jaegerCollectorSpanExporter: {}, simpleSpanProcessor: {} }] }",
                "global.tracing.backends[0].jaegerCollectorSpanExporter",
            ),
            (
                "{ backends: [{ otlpSpanExporter: { address: 'c:1' }, batchSpanProcessor: { blocking: true } }] }",
                "global.tracing.backends[0].batchSpanProcessor.blocking",
            ),
            (
                "{ backends: [{ otlpSpanExporter: { address: 'c:1', proxyUrl: 'http://p' }, simpleSpanProcessor: {} }] }",
                "global.tracing.backends[0].otlpSpanExporter.proxyUrl",
            ),
            (
                "{ backends: [{ otlpSpanExporter: { address: 'c:1', oauth: {} }, simpleSpanProcessor: {} }] }",
                "global.tracing.backends[0].otlpSpanExporter.oauth",
            ),
            (
                "{ backends: [{ otlpSpanExporter: { address: 'c:1', addMetadataJmespathExpression: {} }, simpleSpanProcessor: {} }] }",
                "global.tracing.backends[0].otlpSpanExporter.addMetadataJmespathExpression",
            ),
            (
                "{ backends: [{ otlpSpanExporter: { address: 'c:1', defaultServiceConfig: {} }, simpleSpanProcessor: {} }] }",
                "global.tracing.backends[0].otlpSpanExporter.defaultServiceConfig",
            ),
            (
                "{ backends: [{ otlpSpanExporter: { address: 'c:1', tracing: {} }, simpleSpanProcessor: {} }] }",
                "global.tracing.backends[0].otlpSpanExporter.tracing",
            ),
            (
                "{ backends: [{ otlpSpanExporter: { address: 'c:1' } }] }",
                "global.tracing.backends[0].batchSpanProcessor",
            ),
            (
                "{ backends: [{ otlpSpanExporter: {}, simpleSpanProcessor: {} }] }",
                "global.tracing.backends[0].otlpSpanExporter.address",
            ),
            (
                "{ sampler: { parentBased: {} } }",
                "global.tracing.sampler.parentBased.noParent",
            ),
            (
                "{ sampler: { maximumRate: { samplesPerEpoch: 1 } } }",
                "global.tracing.sampler.maximumRate.epochDuration",
            ),
            (
                "{ resourceAttributes: [{ key: 'k', value: { arrayValue: {} } }] }",
                "global.tracing.resourceAttributes[0].value.arrayValue",
            ),
        ] {
            let error = refused(text);
            assert!(error.contains(path), "{text}: {error}");
        }
    }

    #[test]
    fn server_tracing_names_fields_of_the_runner_messages() {
        // Buildbarn's shape keyed by full method name; a field that does
        // not exist must stop startup rather than silently never appear.
        let config = load_with(
            "grpcServers: [{ listenPaths: ['/s'], authenticationPolicy: { allow: {} },
               tracing: { '/buildbarn.runner.Runner/Run': {
                 attributesFromFirstRequestMessage: ['arguments', 'working_directory'],
                 attributesFromFirstResponseMessage: ['exit_code'] } } }]",
        )
        .expect("decodes");
        let tracing = &config.grpc_servers[0].tracing;
        assert_eq!(tracing.run_request, vec!["arguments", "working_directory"]);
        assert_eq!(tracing.run_response, vec!["exit_code"]);
        for (text, path) in [
            (
                "{ '/buildbarn.runner.Runner/Run': { attributesFromFirstRequestMessage: ['environment_variables'] } }",
                "attributesFromFirstRequestMessage[0]",
            ),
            (
                "{ '/rbe_runner.events.v1.Events/Subscribe': {} }",
                "grpcServers[0].tracing",
            ),
        ] {
            let error = load_with(&format!(
                "grpcServers: [{{ listenPaths: ['/s'], authenticationPolicy: {{ allow: {{}} }}, tracing: {text} }}]"
            ))
            .expect_err(text)
            .to_string();
            assert!(error.contains(path), "{text}: {error}");
        }
    }

    #[test]
    fn an_unset_sampler_follows_the_parent_and_samples_new_traces() {
        // OpenTelemetry's default, so that bb_worker's decision is kept.
        let config = tracing("{ backends: [] }");
        assert_eq!(config.sampler, SamplerConfig::default());
        let config = tracing(
            "{ sampler: { parentBased: { noParent: { traceIdRatioBased: 0.5 },
                 remoteParentNotSampled: { always: {} } } } }",
        );
        let SamplerConfig::ParentBased(parent) = config.sampler else {
            panic!("parent based");
        };
        assert_eq!(parent.no_parent, SamplerConfig::TraceIdRatioBased(0.5));
        assert_eq!(
            parent.remote_parent_not_sampled,
            Some(SamplerConfig::Always)
        );
    }
}
