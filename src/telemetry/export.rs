//! Getting spans to the collector without ever holding up an action.
//!
//! Each backend is the SDK's batch processor (a background thread; the
//! simple processor is the same with batches of one, so that ending a span
//! never waits for the network) in front of the SDK's OTLP/gRPC exporter,
//! which speaks over a tonic channel of our own: the Buildbarn client
//! configuration's address (TCP or `unix://`), TLS with our rustls
//! settings, keepalive and window sizes.
//!
//! Spans the runner gives up on are counted by reason: `queue_full` when
//! the processor's queue has no room (counted here, before the SDK would
//! drop them silently), `export_failed` when the collector could not take
//! a batch (down, refusing, too slow).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::{
    KeyPairSource, OtlpExporterConfig, SpanProcessorConfig, TlsClientConfig, TracingBackend,
};

use super::TelemetryError;

/// OpenTelemetry's default queue of a batch processor, also used for the
/// simple processor's.
const DEFAULT_MAX_QUEUE_SIZE: usize = 2048;
/// How long one export may take when `exportTimeout` is unset
/// (OpenTelemetry's default).
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Spans given up on, by reason; the totals behind
/// `rbe_runner_spans_dropped_total`.
#[derive(Debug, Default)]
pub struct SpanDrops {
    queue_full: AtomicU64,
    export_failed: AtomicU64,
}

impl SpanDrops {
    /// Spans dropped because a processor's queue was full.
    pub fn queue_full_total(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed)
    }

    /// Spans in batches the collector did not take.
    pub fn export_failed_total(&self) -> u64 {
        self.export_failed.load(Ordering::Relaxed)
    }
}

/// The span processor of one backend: its queue gate, the SDK's batch
/// processor and our exporter. Must be called within the Tokio runtime,
/// which the channel's connection task runs on.
pub fn processor(
    backend: &TracingBackend,
    drops: Arc<SpanDrops>,
) -> Result<QueueGate, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel(&backend.exporter)?)
        .with_metadata(metadata(&backend.exporter))
        .with_timeout(match backend.processor {
            SpanProcessorConfig::Batch(batch) => {
                batch.export_timeout.unwrap_or(DEFAULT_EXPORT_TIMEOUT)
            }
            SpanProcessorConfig::Simple => DEFAULT_EXPORT_TIMEOUT,
        })
        .build()
        .map_err(|err| TelemetryError::Exporter(err.to_string()))?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let exporter = CountingExporter {
        inner: exporter,
        drops: drops.clone(),
        in_flight: in_flight.clone(),
    };
    let mut batch = BatchConfigBuilder::default();
    let max_queue_size = match backend.processor {
        SpanProcessorConfig::Simple => {
            batch = batch.with_max_export_batch_size(1);
            DEFAULT_MAX_QUEUE_SIZE
        }
        SpanProcessorConfig::Batch(settings) => {
            if let Some(size) = settings.max_export_batch_size {
                batch = batch.with_max_export_batch_size(size);
            }
            if let Some(delay) = settings.batch_timeout {
                batch = batch.with_scheduled_delay(delay);
            }
            settings.max_queue_size.unwrap_or(DEFAULT_MAX_QUEUE_SIZE)
        }
    };
    batch = batch.with_max_queue_size(max_queue_size);
    Ok(QueueGate {
        inner: BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch.build())
            .build(),
        in_flight,
        max_queue_size,
        drops,
    })
}

/// `addMetadata`, sent with every export. Names and values were checked
/// when the configuration was decoded; a value that still fails is left
/// out rather than failing startup.
fn metadata(config: &OtlpExporterConfig) -> MetadataMap {
    let mut map = MetadataMap::new();
    for (header, values) in &config.add_metadata {
        for value in values {
            if header.ends_with("-bin") {
                if let Ok(key) = MetadataKey::from_bytes(header.as_bytes()) {
                    map.append_bin(key, MetadataValue::from_bytes(value.as_bytes()));
                }
            } else if let (Ok(key), Ok(value)) = (
                MetadataKey::from_bytes(header.as_bytes()),
                MetadataValue::try_from(value.as_str()),
            ) {
                map.append(key, value);
            }
        }
    }
    map
}

/// Where the channel connects.
#[derive(Clone)]
enum Target {
    Tcp(String),
    Unix(String),
}

/// A byte stream the channel speaks HTTP/2 over.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The channel to the collector, connected lazily (and again after a
/// failure) on first use, so that a collector that is down at startup only
/// costs the spans exported meanwhile.
fn channel(config: &OtlpExporterConfig) -> Result<Channel, TelemetryError> {
    let (uri, target) = match config.address.strip_prefix("unix://") {
        Some(path) => ("http://localhost".to_owned(), Target::Unix(path.to_owned())),
        None => (
            format!("http://{}", config.address),
            Target::Tcp(config.address.clone()),
        ),
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|err| TelemetryError::Address(format!("{:?}: {err}", config.address)))?;
    if let Some(keepalive) = config.keepalive {
        if let Some(time) = keepalive.time {
            endpoint = endpoint.http2_keep_alive_interval(time);
        }
        if let Some(timeout) = keepalive.timeout {
            endpoint = endpoint.keep_alive_timeout(timeout);
        }
        endpoint = endpoint.keep_alive_while_idle(keepalive.permit_without_stream);
    }
    if let Some(size) = config.initial_window_size_bytes {
        endpoint = endpoint.initial_stream_window_size(size);
    }
    if let Some(size) = config.initial_conn_window_size_bytes {
        endpoint = endpoint.initial_connection_window_size(size);
    }
    let tls = match &config.tls {
        Some(tls) => Some((
            tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(tls)?)),
            server_name(tls, &target)?,
        )),
        None => None,
    };
    let connector = tower::service_fn(move |_: Uri| {
        let target = target.clone();
        let tls = tls.clone();
        async move {
            let stream: Box<dyn Io> = match &target {
                Target::Tcp(address) => {
                    let stream = tokio::net::TcpStream::connect(address.as_str()).await?;
                    stream.set_nodelay(true)?;
                    match tls {
                        Some((connector, name)) => Box::new(connector.connect(name, stream).await?),
                        None => Box::new(stream),
                    }
                }
                Target::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    match tls {
                        Some((connector, name)) => Box::new(connector.connect(name, stream).await?),
                        None => Box::new(stream),
                    }
                }
            };
            Ok::<_, io::Error>(TokioIo::new(Pin::from(stream)))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// The name checked in the collector's certificate: `serverName`, else
/// the address's host.
fn server_name(
    tls: &TlsClientConfig,
    target: &Target,
) -> Result<ServerName<'static>, TelemetryError> {
    let name = if !tls.server_name.is_empty() {
        tls.server_name.clone()
    } else {
        match target {
            Target::Tcp(address) => address
                .rsplit_once(':')
                .map_or(address.as_str(), |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            Target::Unix(_) => "localhost".to_owned(),
        }
    };
    ServerName::try_from(name.clone())
        .map_err(|err| TelemetryError::Tls(format!("serverName {name:?}: {err}")))
}

/// rustls' client settings from a Buildbarn `tls.ClientConfiguration`.
fn tls_client_config(config: &TlsClientConfig) -> Result<rustls::ClientConfig, TelemetryError> {
    let provider = crate::listener::tls::crypto_provider(config.tls12_cipher_suites.as_deref());
    let tls_error =
        |what: &str, err: &dyn std::fmt::Display| TelemetryError::Tls(format!("{what}: {err}"));
    let mut roots = rustls::RootCertStore::empty();
    for certificate in
        CertificateDer::pem_slice_iter(config.server_certificate_authorities.as_bytes())
    {
        let certificate =
            certificate.map_err(|err| tls_error("serverCertificateAuthorities", &err))?;
        roots
            .add(certificate)
            .map_err(|err| tls_error("serverCertificateAuthorities", &err))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| tls_error("cipherSuites", &err))?
        .with_root_certificates(roots);
    let mut client = match &config.client_key_pair {
        None => builder.with_no_client_auth(),
        Some(source) => {
            let (certificate, private_key) = match source {
                KeyPairSource::Inline {
                    certificate,
                    private_key,
                } => (
                    certificate.as_bytes().to_vec(),
                    private_key.as_bytes().to_vec(),
                ),
                KeyPairSource::Files {
                    certificate_path,
                    private_key_path,
                    ..
                } => (
                    std::fs::read(certificate_path).map_err(|err| {
                        tls_error(&format!("{}", certificate_path.display()), &err)
                    })?,
                    std::fs::read(private_key_path).map_err(|err| {
                        tls_error(&format!("{}", private_key_path.display()), &err)
                    })?,
                ),
            };
            let chain = CertificateDer::pem_slice_iter(&certificate)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| tls_error("clientKeyPair certificate", &err))?;
            let key = PrivateKeyDer::from_pem_slice(&private_key)
                .map_err(|err| tls_error("clientKeyPair private key", &err))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| tls_error("clientKeyPair", &err))?
        }
    };
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(client)
}

/// The OTLP exporter, counting the spans of batches it failed to export.
#[derive(Debug)]
struct CountingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    drops: Arc<SpanDrops>,
    /// Spans handed to the processor and not yet exported or failed.
    in_flight: Arc<AtomicUsize>,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        let result = self.inner.export(batch).await;
        self.in_flight.fetch_sub(count, Ordering::AcqRel);
        if result.is_err() {
            self.drops
                .export_failed
                .fetch_add(count as u64, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The batch processor, behind a gate that drops (and counts) a span
/// when as many as the queue holds are already waiting or being exported.
/// The SDK's own queue then never overflows: it holds at most what the
/// gate let through and was not yet taken out for export.
#[derive(Debug)]
pub struct QueueGate {
    inner: BatchSpanProcessor,
    in_flight: Arc<AtomicUsize>,
    max_queue_size: usize,
    drops: Arc<SpanDrops>,
}

impl SpanProcessor for QueueGate {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_queue_size {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.drops.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
