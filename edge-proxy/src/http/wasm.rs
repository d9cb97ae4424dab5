//! A route's proxy-wasm filter (`routes[].wasm_filter:`, the `wasm-host`
//! crate) through the request context. The request side runs in
//! `request_filter` on the visitor's request, after routing and the
//! header policy's request edits, so a filter's own answer (a preflight, a
//! refusal) costs no tunnel stream. Its edits are recorded there and made
//! to the request going upstream in `upstream_request_filter`, where the
//! native policy's go: after the edge's forwarding headers, so a filter's
//! edit of one of them stands, as in Envoy (whose connection manager sets
//! them before the filter chain). The copy Pingora makes for the service
//! has room for added headers; the visitor's own map has none, and
//! growing it (and its case map) cost more than the filter's edits. The
//! response side runs last in `response_filter`.
//!
//! A filter that crashes, runs past its time or grows past its memory
//! fails only its request: 500 `FILTER_FAILED` in the error shape (the
//! host has logged why and replaces the instance).

use bytes::Bytes;
use header_policy::Headers;
use http::HeaderName;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use wasm_host::{FilterError, LocalReply, Outcome, StreamInfo};

use super::context::{apply, Edit, Filtered, RequestCtx};
use super::failure::{ErrorKind, Failure};
use super::policy::{parse_field, Response};

/// The visitor's request as the filter reads it, with its edits recorded
/// rather than made (names and values were checked by the host; one that
/// `http` refuses is dropped, as the native policy's would be). Its fields
/// are the visitor's followed by those the filter set or added, so that a
/// filter replacing the whole map (`proxy_set_header_map_pairs`, replayed
/// as a removal of every name listed) removes what it added before too.
struct Recorder<'a> {
    visitor: &'a RequestHeader,
    edits: &'a mut Vec<Edit>,
}

impl Headers for Recorder<'_> {
    fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        Headers::get_all(&self.visitor.headers, name)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let added = self.edits.iter().filter_map(|edit| match edit {
            Edit::Set(n, v) | Edit::Append(n, v) => Some((n.as_str(), v.as_bytes())),
            Edit::Remove(_) => None,
        });
        Headers::iter(&self.visitor.headers).chain(added)
    }

    fn set(&mut self, name: &str, value: &[u8]) {
        if let Some((n, v)) = parse_field(name, value) {
            self.edits.push(Edit::Set(n, v));
        }
    }

    fn append(&mut self, name: &str, value: &[u8]) {
        if let Some((n, v)) = parse_field(name, value) {
            self.edits.push(Edit::Append(n, v));
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            self.edits.push(Edit::Remove(n));
        }
    }
}

/// What the request side decided.
#[derive(Debug)]
pub enum Step {
    /// Proxy the request, with the headers as the filter left them.
    Continue,
    /// Answer with the filter's own response.
    Reply(LocalReply),
    /// The filter closed the stream: close the visitor's connection.
    Reset,
    /// The filter failed: answer 500.
    Failed(Failure),
}

/// Starts the route's filter on the request and runs its request side.
pub fn on_request(session: &mut Session, ctx: &mut RequestCtx) -> Step {
    let Some(pool) = ctx.target.as_ref().and_then(|t| t.wasm.clone()) else {
        return Step::Continue;
    };
    let mut stream = match pool.start() {
        Ok(s) => s,
        Err(e) => return Step::Failed(failed(&e)),
    };
    let end_of_stream = session.is_body_empty();
    let req = session.req_header();
    let info = stream_info(session, ctx, req.method.as_str(), path(req), None);
    let mut edits = Vec::new();
    let mut recorder = Recorder {
        visitor: req,
        edits: &mut edits,
    };
    let outcome = stream.on_request_headers(&mut recorder, &info, end_of_stream);
    ctx.wasm = Some(Filtered { stream, edits });
    step(outcome)
}

/// Makes the filter's request edits to the request going upstream.
pub fn on_upstream_request(upstream: &mut RequestHeader, ctx: &mut RequestCtx) {
    if let Some(filtered) = ctx.wasm.as_mut() {
        apply(filtered.edits.drain(..), upstream);
    }
}

/// Runs the filter's response side on the service's response. A failure
/// or the filter's own answer replaces the response: the step travels as
/// the error ([`Replaced`]) that `fail_to_proxy` answers.
pub fn on_response(
    session: &Session,
    response: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let Some(mut filtered) = ctx.wasm.take() else {
        return Ok(());
    };
    let req = session.req_header();
    let status = response.status.as_u16();
    let info = stream_info(session, ctx, req.method.as_str(), path(req), Some(status));
    let outcome = filtered
        .stream
        .on_response_headers(&mut Response(response), &info, false);
    ctx.wasm = Some(filtered);
    match step(outcome) {
        Step::Continue => Ok(()),
        other => Err(other.into_error()),
    }
}

/// A step that ends the request, carried as the error Pingora hands to
/// `fail_to_proxy`, which answers it ([`replaced`]).
#[derive(Debug)]
pub struct Replaced(pub Step);

impl std::fmt::Display for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Step::Continue => f.write_str("the wasm filter continued"),
            Step::Reply(r) => write!(f, "the wasm filter answered {}", r.status),
            Step::Reset => f.write_str("the wasm filter closed the stream"),
            Step::Failed(_) => f.write_str("the wasm filter failed"),
        }
    }
}

impl std::error::Error for Replaced {}

impl Step {
    pub fn into_error(self) -> Box<Error> {
        Error::because(ErrorType::InternalError, "wasm filter", Replaced(self))
    }
}

/// The filter's step, when it is why the request ended.
pub fn replaced(e: &Error) -> Option<&Step> {
    e.root_cause()
        .downcast_ref::<Replaced>()
        .map(|Replaced(step)| step)
}

fn step(outcome: std::result::Result<Outcome, FilterError>) -> Step {
    match outcome {
        Ok(Outcome::Continue) => Step::Continue,
        Ok(Outcome::Respond(reply)) => Step::Reply(reply),
        Ok(Outcome::Reset) => Step::Reset,
        Err(e) => Step::Failed(failed(&e)),
    }
}

/// The visitor sees that the filter failed, not how (the host logged it).
fn failed(e: &FilterError) -> Failure {
    if let FilterError::Start { .. } | FilterError::StreamLost { .. } = e {
        tracing::warn!(error = %e, "wasm filter unavailable for a request");
    }
    Failure::new(ErrorKind::FilterFailed)
}

/// `request.path`: the path with the query, in both phases.
fn path(req: &RequestHeader) -> &str {
    req.uri
        .path_and_query()
        .map_or(req.uri.path(), |p| p.as_str())
}

/// The properties the filter may read.
fn stream_info<'a>(
    session: &Session,
    ctx: &'a RequestCtx,
    method: &'a str,
    path: &'a str,
    response_code: Option<u16>,
) -> StreamInfo<'a> {
    StreamInfo {
        method,
        authority: ctx.host.sent().unwrap_or(""),
        path,
        scheme: if ctx.tls.is_some() { "https" } else { "http" },
        protocol: match ctx.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        request_id: Some(&ctx.id),
        source: session.client_addr().and_then(|a| a.as_inet()).copied(),
        destination: session.server_addr().and_then(|a| a.as_inet()).copied(),
        route_name: ctx.target.as_ref().and_then(|t| t.route_name.as_deref()),
        response_code,
        claims: &[],
        extra: &[],
    }
}

/// Writes the filter's own response (`proxy_send_local_response`): its
/// status, headers and body, with the request id. A gRPC answer is
/// trailers-only, as Envoy sends it.
pub async fn reply(session: &mut Session, reply: &LocalReply, request_id: &str) -> u16 {
    let status = if reply.grpc_status.is_some() {
        200
    } else {
        reply.status
    };
    let Ok(mut header) = ResponseHeader::build(status, Some(reply.headers.len() + 3)) else {
        return 0;
    };
    for (name, value) in &reply.headers {
        let _ = header.append_header(name.clone(), value.as_slice());
    }
    if let Some(code) = reply.grpc_status {
        let _ = header.insert_header("content-type", "application/grpc");
        let _ = header.insert_header("grpc-status", code.to_string());
    }
    let _ = header.insert_header("content-length", reply.body.len().to_string());
    let _ = header.insert_header("x-request-id", request_id);
    let body = (!reply.body.is_empty()).then(|| Bytes::copy_from_slice(&reply.body));
    let end = body.is_none();
    if session
        .write_response_header(Box::new(header), end)
        .await
        .is_err()
    {
        return 0;
    }
    if let Some(body) = body {
        if session.write_response_body(Some(body), true).await.is_err() {
            return 0;
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Edits recorded on the visitor's request land on the upstream copy,
    /// and a replacement of the whole map (its replay: every listed name
    /// removed) takes what the filter added earlier too.
    #[test]
    fn recorded_edits_land_on_the_upstream_copy() {
        let mut visitor = RequestHeader::build("GET", b"/", None).unwrap();
        visitor.insert_header("host", "a.example").unwrap();
        visitor.insert_header("x-old", "1").unwrap();
        let mut edits = Vec::new();
        let mut recorder = Recorder {
            visitor: &visitor,
            edits: &mut edits,
        };
        recorder.set("x-new", b"2");
        recorder.append("x-old", b"3");
        recorder.remove("host");
        let mut upstream = visitor.clone();
        apply(edits.drain(..), &mut upstream);
        let values = |h: &RequestHeader, name: &str| -> Vec<String> {
            h.headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(values(&upstream, "x-new"), ["2"]);
        assert_eq!(values(&upstream, "x-old"), ["1", "3"]);
        assert!(values(&upstream, "host").is_empty());
        assert_eq!(
            values(&visitor, "host"),
            ["a.example"],
            "the visitor's is left alone"
        );

        // A filter that adds a field, then replaces the whole map.
        let mut recorder = Recorder {
            visitor: &visitor,
            edits: &mut edits,
        };
        recorder.set("x-early", b"1");
        let names: Vec<String> = recorder.iter().map(|(n, _)| n.to_owned()).collect();
        for name in &names {
            recorder.remove(name);
        }
        recorder.append("x-only", b"1");
        let mut upstream = visitor.clone();
        apply(edits, &mut upstream);
        let left: Vec<&str> = upstream.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(left, ["x-only"]);
    }
}
