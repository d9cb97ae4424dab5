//! Request spans exported over OTLP/gRPC (`traces:`) to a collector (the
//! one in `test-support`, speaking the OTLP trace service).

use std::time::Duration;

use conformance::{exchange, Stack};
use serde_json::Value;

const VISITOR_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const VISITOR_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A visitor's request with a `traceparent` is one span of that trace:
/// the visitor's span its parent, and its own id the parent the service
/// is given; the span carries the route, environment and status, and the
/// spans still buffered are sent when the edge shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_a_span_between_the_visitors_and_the_services() {
    let (collector, received) = test_support::otlp::collector().await;
    let yaml =
        format!("traces:\n  otlp_endpoint: http://{collector}\n  service_name: edge-under-test\n");
    let stack = tokio::task::spawn_blocking(move || {
        let stack = Stack::start_with_edge_yaml(&yaml);
        let traceparent = format!("traceparent: 00-{VISITOR_TRACE}-{VISITOR_SPAN}-01");
        let reply = exchange(
            &stack,
            &stack.preview_host(),
            "/headers",
            &["-H", &traceparent],
        );
        (stack, reply)
    });
    let (mut stack, (status, _, body)) = stack.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    let forwarded = seen["traceparent"].as_str().unwrap().to_string();
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!(
        parts[1], VISITOR_TRACE,
        "the visitor's trace goes on: {forwarded}"
    );
    assert_ne!(
        parts[2], VISITOR_SPAN,
        "the service's parent is the edge's span"
    );

    stack.edge.interrupt();
    let wait = received.wait_for(|s| hex(&s.trace_id) == VISITOR_TRACE);
    let (service, span) = tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("the edge sends its spans at shutdown");
    assert!(service.contains("edge-under-test"), "{service}");
    assert_eq!(hex(&span.parent_span_id), VISITOR_SPAN);
    assert_eq!(hex(&span.span_id), parts[2]);
    assert!(span.name.starts_with("GET "), "{}", span.name);
    let attribute = |key: &str| {
        (span.attributes.iter())
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_else(|| panic!("no {key} in {:?}", span.attributes))
    };
    assert!(attribute("http.response.status_code").contains("200"));
    assert!(attribute("preview.environment").contains("demo"));
    assert!(attribute("url.path").contains("/headers"));
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    stack.edge.wait_exit(Duration::from_secs(30));
}
