//! Spans of the edge's requests, exported over OTLP/gRPC (`traces:`).
//!
//! The edge is one span of the visitor's trace: a request whose valid
//! `traceparent` names a parent continues that trace, any other starts one,
//! and the service gets a `traceparent` naming the edge's span as its
//! parent, so the service's spans hang under the edge's. Each span is made
//! whole when the request ends, with the ids forwarded, the request's
//! start and end, and its route, status and failure, and handed to the
//! OpenTelemetry SDK's batch exporter (a request never waits for the
//! collector; a collector away loses spans, not requests).
//!
//! The SDK is used directly rather than through `tracing-opentelemetry`:
//! a span's ids must be the ones already sent to the service, which the
//! bridge does not let the caller choose.

use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::TraceSettings;

/// The ids of one request's span, as forwarded to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: u128,
    /// The visitor's span, when its `traceparent` named one.
    pub parent: Option<u64>,
    /// The edge's span.
    pub span_id: u64,
    pub sampled: bool,
}

impl Trace {
    /// Continues the trace `traceparent` names (already checked valid by
    /// the caller, or `None`), or starts a sampled one.
    pub fn continuing(traceparent: Option<&str>) -> Self {
        let span_id = rand::random::<u64>() | 1;
        let parsed = traceparent.and_then(|t| {
            let mut parts = t.split('-').skip(1);
            let trace_id = u128::from_str_radix(parts.next()?, 16).ok()?;
            let parent = u64::from_str_radix(parts.next()?, 16).ok()?;
            let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
            Some((trace_id, parent, flags & 1 == 1))
        });
        match parsed {
            Some((trace_id, parent, sampled)) => Self {
                trace_id,
                parent: Some(parent),
                span_id,
                sampled,
            },
            None => Self {
                trace_id: rand::random::<u128>() | 1,
                parent: None,
                span_id,
                sampled: true,
            },
        }
    }

    /// The `traceparent` the service gets: this trace, the edge's span.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-0{}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// One finished request, as its span says it.
pub struct Finished<'a> {
    pub trace: Trace,
    pub method: &'a str,
    /// The route's label (`http.route`), empty when none matched.
    pub route: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub environment: &'a str,
    pub request_id: &'a str,
    /// The edge's error code when it refused or failed the request.
    pub error: Option<&'static str>,
    pub start: SystemTime,
    pub end: SystemTime,
}

pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Traces {
    /// Starts the exporter (needs a Tokio runtime, which drives it).
    pub fn start(settings: &TraceSettings) -> anyhow::Result<Self> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&settings.otlp_endpoint)
            .build()?;
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "edge-proxy");
        Ok(Self { provider, tracer })
    }

    /// Hands `request`'s span to the exporter, if its trace is sampled.
    pub fn export(&self, request: Finished<'_>) {
        let trace = request.trace;
        if !trace.sampled {
            return;
        }
        let parent = match trace.parent {
            Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(trace.trace_id),
                SpanId::from(parent),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let name = if request.route.is_empty() {
            request.method.to_string()
        } else {
            format!("{} {}", request.method, request.route)
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", request.method.to_string()),
            KeyValue::new("http.response.status_code", i64::from(request.status)),
            KeyValue::new("server.address", request.host.to_string()),
            KeyValue::new("url.path", request.path.to_string()),
            KeyValue::new("preview.request_id", request.request_id.to_string()),
        ];
        if !request.route.is_empty() {
            attributes.push(KeyValue::new("http.route", request.route.to_string()));
        }
        if !request.environment.is_empty() {
            attributes.push(KeyValue::new(
                "preview.environment",
                request.environment.to_string(),
            ));
        }
        if let Some(code) = request.error {
            attributes.push(KeyValue::new("error.type", code));
        }
        let mut builder = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(request.start)
            .with_attributes(attributes);
        builder.trace_id = Some(TraceId::from(trace.trace_id));
        builder.span_id = Some(SpanId::from(trace.span_id));
        if request.status >= 500 || request.status == 0 {
            builder.status = Status::error(request.error.unwrap_or("no response"));
        }
        let mut span = builder.start_with_context(&self.tracer, &parent);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, request.end);
    }

    /// Sends the spans still buffered (at shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::debug!(error = %e, "could not send the last spans");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_continues_the_visitors_trace_as_a_span_of_its_own() {
        let visitor = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = Trace::continuing(Some(visitor));
        assert_eq!(trace.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(trace.parent, Some(0x00f067aa0ba902b7));
        assert!(trace.sampled);
        let forwarded = trace.traceparent();
        assert!(
            crate::http::forwarding::is_valid_traceparent(&forwarded),
            "{forwarded}"
        );
        assert!(forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(forwarded.ends_with("-01"));
        assert!(
            !forwarded.contains("00f067aa0ba902b7"),
            "the edge's span, not the visitor's"
        );

        let unsampled = Trace::continuing(Some(&visitor.replace("-01", "-00")));
        assert!(!unsampled.sampled && unsampled.traceparent().ends_with("-00"));

        let started = Trace::continuing(None);
        assert!(started.sampled && started.parent.is_none());
        assert!(crate::http::forwarding::is_valid_traceparent(
            &started.traceparent()
        ));
    }
}
