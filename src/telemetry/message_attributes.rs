//! `grpcServers[].tracing`: attributes of a call's server span taken from
//! its first request and response messages (`request.arguments`,
//! `response.exit_code`, ...), as Buildbarn's servers add them.

use opentelemetry::{Array, KeyValue, StringValue, Value};

use crate::config::ServerTracingConfig;
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};

use super::ServerSpan;

/// The fields one server's spans take, checked against the messages when
/// the configuration was decoded.
#[derive(Debug, Default)]
pub struct MessageAttributes {
    config: ServerTracingConfig,
}

impl MessageAttributes {
    pub fn new(config: &ServerTracingConfig) -> Self {
        MessageAttributes {
            config: config.clone(),
        }
    }

    /// Adds the configured `RunRequest` fields to `span`.
    pub fn run_request(&self, span: &mut ServerSpan, request: &RunRequest) {
        if self.config.run_request.is_empty() || !span.is_recording() {
            return;
        }
        let attributes = self
            .config
            .run_request
            .iter()
            .filter_map(|name| {
                let value = match name.as_str() {
                    "arguments" => Value::Array(Array::String(
                        request
                            .arguments
                            .iter()
                            .map(|argument| StringValue::from(argument.clone()))
                            .collect(),
                    )),
                    "working_directory" => Value::from(request.working_directory.clone()),
                    "stdout_path" => Value::from(request.stdout_path.clone()),
                    "stderr_path" => Value::from(request.stderr_path.clone()),
                    "input_root_directory" => Value::from(request.input_root_directory.clone()),
                    "temporary_directory" => Value::from(request.temporary_directory.clone()),
                    "server_logs_directory" => Value::from(request.server_logs_directory.clone()),
                    _ => return None,
                };
                Some(KeyValue::new(format!("request.{name}"), value))
            })
            .collect();
        span.set_attributes(attributes);
    }

    /// Adds the configured `RunResponse` fields to `span`.
    pub fn run_response(&self, span: &mut ServerSpan, response: &RunResponse) {
        if self.config.run_response.is_empty() || !span.is_recording() {
            return;
        }
        let attributes = self
            .config
            .run_response
            .iter()
            .filter(|name| name.as_str() == "exit_code")
            .map(|name| KeyValue::new(format!("response.{name}"), response.exit_code))
            .collect();
        span.set_attributes(attributes);
    }

    /// Adds the configured `CheckReadinessRequest` fields to `span`.
    pub fn check_readiness_request(&self, span: &mut ServerSpan, request: &CheckReadinessRequest) {
        if self.config.check_readiness_request.is_empty() || !span.is_recording() {
            return;
        }
        let attributes = self
            .config
            .check_readiness_request
            .iter()
            .filter(|name| name.as_str() == "path")
            .map(|name| KeyValue::new(format!("request.{name}"), request.path.clone()))
            .collect();
        span.set_attributes(attributes);
    }
}
