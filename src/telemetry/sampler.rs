//! `global.tracing.sampler`: which traces the runner records.
//!
//! `always`, `never` and `traceIdRatioBased` are OpenTelemetry's own.
//! `parentBased` is Buildbarn's five-way choice (a sampler for no parent,
//! and one for each of local/remote × sampled/not sampled), which the
//! SDK's one-delegate `ParentBased` cannot express. `maximumRate` is
//! Buildbarn's: at most `samplesPerEpoch` traces per `epochDuration`,
//! where an epoch begins with the first sample after the previous one
//! ended (not on a fixed grid), exactly as bb-storage counts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

use crate::config::SamplerConfig;
use crate::sync::lock_unpoisoned;

/// A sampler built from the configuration.
#[derive(Debug, Clone)]
pub enum RunnerSampler {
    Always,
    Never,
    Ratio(f64),
    ParentBased(Box<ParentBased>),
    MaximumRate(Arc<MaximumRate>),
}

/// Buildbarn's `parentBased`.
#[derive(Debug, Clone)]
pub struct ParentBased {
    no_parent: RunnerSampler,
    local_parent_not_sampled: RunnerSampler,
    local_parent_sampled: RunnerSampler,
    remote_parent_not_sampled: RunnerSampler,
    remote_parent_sampled: RunnerSampler,
}

impl RunnerSampler {
    /// The sampler `config` describes. Unset branches of `parentBased`
    /// follow the parent, as OpenTelemetry's defaults do.
    pub fn new(config: &SamplerConfig) -> Self {
        match config {
            SamplerConfig::Always => RunnerSampler::Always,
            SamplerConfig::Never => RunnerSampler::Never,
            SamplerConfig::TraceIdRatioBased(ratio) => RunnerSampler::Ratio(*ratio),
            SamplerConfig::MaximumRate {
                samples_per_epoch,
                epoch_duration,
            } => RunnerSampler::MaximumRate(Arc::new(MaximumRate::new(
                *samples_per_epoch,
                *epoch_duration,
            ))),
            SamplerConfig::ParentBased(parent) => {
                let or = |sampler: &Option<SamplerConfig>, default: RunnerSampler| {
                    sampler.as_ref().map_or(default, RunnerSampler::new)
                };
                RunnerSampler::ParentBased(Box::new(ParentBased {
                    no_parent: RunnerSampler::new(&parent.no_parent),
                    local_parent_not_sampled: or(
                        &parent.local_parent_not_sampled,
                        RunnerSampler::Never,
                    ),
                    local_parent_sampled: or(&parent.local_parent_sampled, RunnerSampler::Always),
                    remote_parent_not_sampled: or(
                        &parent.remote_parent_not_sampled,
                        RunnerSampler::Never,
                    ),
                    remote_parent_sampled: or(&parent.remote_parent_sampled, RunnerSampler::Always),
                }))
            }
        }
    }

    /// The decision for a span of trace `trace_id` whose parent is in
    /// `parent` (if any).
    fn decide(&self, parent: Option<&Context>, trace_id: TraceId) -> SamplingDecision {
        match self {
            RunnerSampler::Always => SamplingDecision::RecordAndSample,
            RunnerSampler::Never => SamplingDecision::Drop,
            RunnerSampler::Ratio(ratio) => {
                Sampler::TraceIdRatioBased(*ratio)
                    .should_sample(None, trace_id, "", &SpanKind::Internal, &[], &[])
                    .decision
            }
            RunnerSampler::MaximumRate(rate) => rate.decide(Instant::now()),
            RunnerSampler::ParentBased(branches) => {
                let parent_span = parent
                    .map(|cx| cx.span().span_context().clone())
                    .filter(|span| span.is_valid());
                let branch = match parent_span {
                    None => &branches.no_parent,
                    Some(span) => match (span.is_remote(), span.is_sampled()) {
                        (true, true) => &branches.remote_parent_sampled,
                        (true, false) => &branches.remote_parent_not_sampled,
                        (false, true) => &branches.local_parent_sampled,
                        (false, false) => &branches.local_parent_not_sampled,
                    },
                };
                branch.decide(parent, trace_id)
            }
        }
    }
}

impl ShouldSample for RunnerSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        SamplingResult {
            decision: self.decide(parent_context, trace_id),
            attributes: Vec::new(),
            // The parent's tracestate travels on, whatever was decided.
            trace_state: parent_context
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// Buildbarn's `maximumRate`: a budget of samples per epoch.
#[derive(Debug)]
pub struct MaximumRate {
    samples_per_epoch: u64,
    epoch_duration: Duration,
    state: Mutex<Epoch>,
}

#[derive(Debug)]
struct Epoch {
    /// Samples the current epoch still allows.
    remaining: u64,
    /// When the current epoch ends; `None` before the first sample.
    ends: Option<Instant>,
}

impl MaximumRate {
    pub fn new(samples_per_epoch: u64, epoch_duration: Duration) -> Self {
        MaximumRate {
            samples_per_epoch,
            epoch_duration,
            state: Mutex::new(Epoch {
                remaining: 0,
                ends: None,
            }),
        }
    }

    /// Samples while the epoch has budget left; once it is spent, the
    /// first span after the epoch's end starts a new epoch (and is
    /// sampled, even with a budget of zero, as bb-storage does).
    pub fn decide(&self, now: Instant) -> SamplingDecision {
        let mut epoch = lock_unpoisoned(&self.state);
        if epoch.remaining > 0 {
            epoch.remaining -= 1;
            return SamplingDecision::RecordAndSample;
        }
        if epoch.ends.is_none_or(|ends| now >= ends) {
            epoch.remaining = self.samples_per_epoch.saturating_sub(1);
            epoch.ends = Some(now + self.epoch_duration);
            return SamplingDecision::RecordAndSample;
        }
        SamplingDecision::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ParentBasedConfig;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};

    fn sampled(decision: SamplingDecision) -> bool {
        decision == SamplingDecision::RecordAndSample
    }

    #[test]
    fn maximum_rate_allows_a_budget_per_epoch_starting_at_the_first_sample() {
        // Why it matters: bounded load on the tracing backend is the whole
        // point, and the epoch boundaries must be bb-storage's so that a
        // fleet configured for it behaves the same.
        let rate = MaximumRate::new(2, Duration::from_secs(10));
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert!(sampled(rate.decide(at(0))));
        assert!(sampled(rate.decide(at(1))));
        assert!(!sampled(rate.decide(at(2))));
        assert!(!sampled(rate.decide(at(9))));
        // The epoch that began at 0 ended at 10.
        assert!(sampled(rate.decide(at(10))));
        assert!(sampled(rate.decide(at(11))));
        assert!(!sampled(rate.decide(at(19))));
        assert!(sampled(rate.decide(at(20))));
    }

    #[test]
    fn parent_based_takes_the_branch_of_the_parent() {
        // Why it matters: a runner must follow bb_worker's decision, or
        // traces arrive with holes (or unwanted volume).
        let sampler =
            RunnerSampler::new(&SamplerConfig::ParentBased(Box::new(ParentBasedConfig {
                no_parent: SamplerConfig::Never,
                local_parent_not_sampled: None,
                local_parent_sampled: None,
                remote_parent_not_sampled: None,
                remote_parent_sampled: None,
            })));
        let trace_id = TraceId::from_bytes([1; 16]);
        let parent = |flags: TraceFlags| {
            Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                SpanId::from_bytes([2; 8]),
                flags,
                true,
                TraceState::default(),
            ))
        };
        assert!(!sampled(sampler.decide(None, trace_id)));
        assert!(sampled(
            sampler.decide(Some(&parent(TraceFlags::SAMPLED)), trace_id)
        ));
        assert!(!sampled(
            sampler.decide(Some(&parent(TraceFlags::default())), trace_id)
        ));
    }
}
