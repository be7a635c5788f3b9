//! gRPC bootstrap shared by the services: health (`grpc.health.v1`) and server
//! reflection (v1 and v1alpha, for grpcurl 1.8 and later), every call passed
//! through [`crate::rpc::RpcLayer`] (span, trace, correlation id, metrics), and
//! the limits on what one call may send (metadata and message size, see [`RequestLimitsLayer`]).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame};
use tonic::codegen::Bytes;

use tonic::transport::server::Router;
use tonic_health::server::HealthReporter;
use tower::{
    Layer, Service,
    layer::util::{Identity, Stack},
};

use telemetry::metrics::Registry;

use crate::{
    rpc::{KnownMethods, RpcLayer},
    tls::ServerTls,
};

// Where the services and tools have always found them.
pub use crate::health::{LIVENESS, set_status, watch_database};
pub use crate::serve::{bind, probe, serve};

/// The services' router: every call passes through [`RpcLayer`], then
/// [`RequestLimitsLayer`] (so refused calls are measured and traced too).
pub type GrpcRouter = Router<Stack<RequestLimitsLayer, Stack<RpcLayer, Identity>>>;

/// A tonic router already carrying health and reflection, its calls measured
/// into `registry`. Reflection describes the files of `descriptor_sets`
/// (encoded `FileDescriptorSet`s: the service's own contracts, a library's
/// admin service) and the `google.rpc` error details, and lists `services`
/// (the ones this server really offers), health and reflection. With `tls`, the port speaks TLS only (see [`crate::tls`]).
pub fn router_with_health_and_reflection(
    services: &[&str],
    descriptor_sets: &[&'static [u8]],
    registry: &Registry,
    tls: Option<&ServerTls>,
) -> anyhow::Result<(GrpcRouter, HealthReporter)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let configure = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The error details Pulse returns (`google.rpc.BadRequest`, `ErrorInfo`,
            // `RetryInfo`, ...): without them grpcurl cannot print a status's details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(HEALTH);
        for set in descriptor_sets {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        for service in services {
            builder = builder.with_service_name(*service);
        }
        builder
    };
    let reflection_v1 = configure().with_service_name(REFLECTION_V1).build_v1()?;
    let reflection_v1alpha = configure().with_service_name(REFLECTION_V1ALPHA).build_v1alpha()?;
    let known = KnownMethods::new(
        &[services, &[HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA]].concat(),
        &[
            descriptor_sets,
            &[
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ],
        ]
        .concat(),
    )?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls.server_config())?;
    }
    let router = server
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST_BYTES)
        .max_frame_size(HTTP2_MAX_FRAME_BYTES)
        .layer(RpcLayer::new(registry, known))
        .layer(RequestLimitsLayer)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((router, reporter))
}

const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Calls one client connection may have in flight at once (HTTP/2
/// `SETTINGS_MAX_CONCURRENT_STREAMS`). tonic leaves it unlimited: a client
/// sending faster than the database commits then parks every waiting call,
/// its request and its stream in the server's memory (orders grew from 25 to
/// 37 MiB in a few seconds at 4,500 calls a second over 16 connections). With
/// a limit the client waits for a free stream instead.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// The largest request message a call may send (protobuf bytes, before any
/// compression is undone). Pulse's requests carry a few short fields; tonic
/// would allow 4 MiB and answer OUT_OF_RANGE, where gRPC says RESOURCE_EXHAUSTED.
/// Larger messages are refused RESOURCE_EXHAUSTED as soon as their length
/// prefix arrives, without reading them. Services set it on their tonic
/// servers too (`max_decoding_message_size`).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The largest metadata (request headers, counted as HTTP/2 does: name, value
/// and 32 bytes each) a call may send; larger is refused RESOURCE_EXHAUSTED,
/// on that call only.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// What the HTTP/2 layer itself (h2) accepts as one call's headers, beyond
/// [`MAX_METADATA_BYTES`] so that calls between the two get a gRPC status.
/// Above it h2 answers the call alone with HTTP 431; above four times it
/// (or a header block in more frames than such a list needs) h2 takes the
/// connection for an attack and closes it. hyper's default of 16 KiB put that
/// point at 64 KiB: a single 64 KiB header closed the connection and every
/// call on it.
pub const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 256 * 1024;

/// The largest HTTP/2 frame clients may send. A header block is sent in
/// frames of at most this size, and h2 closes the connection when one
/// arrives in more frames than [`HTTP2_MAX_HEADER_LIST_BYTES`] needs; with the
/// 16 KiB default an over-long header list hit that limit before its size
/// could be answered on the call alone. Data frames stay bounded by the
/// flow-control windows.
pub const HTTP2_MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// Refuses, with RESOURCE_EXHAUSTED and on that call only, a call whose
/// metadata is over [`MAX_METADATA_BYTES`] or whose request message is over
/// [`MAX_MESSAGE_BYTES`]. The message is refused from its length prefix, so
/// an oversized message is never buffered; the connection and the other calls
/// on it carry on.
#[derive(Clone, Copy, Default)]
pub struct RequestLimitsLayer;

impl<S> Layer<S> for RequestLimitsLayer {
    type Service = RequestLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimits { inner }
    }
}

#[derive(Clone)]
pub struct RequestLimits<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for RequestLimits<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<tonic::codegen::StdError>,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let metadata = metadata_size(request.headers());
        if metadata > MAX_METADATA_BYTES {
            let status = crate::errors::too_large(
                crate::errors::reason::METADATA_TOO_LARGE,
                format!("request metadata is {metadata} bytes, the limit is {MAX_METADATA_BYTES} bytes"),
                MAX_METADATA_BYTES,
            );
            return Box::pin(futures::future::ready(Ok(status.into_http())));
        }
        let request = request.map(|body| tonic::body::Body::new(LimitedBody::new(body, MAX_MESSAGE_BYTES)));
        Box::pin(self.inner.call(request))
    }
}

/// The size of a header list as HTTP/2 counts it (RFC 9113, 6.5.2).
fn metadata_size(headers: &http::HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum()
}

/// A request body that fails with RESOURCE_EXHAUSTED (which tonic answers as
/// the call's status) at the first gRPC message whose length prefix is over
/// the limit. Messages are a flag byte and a 4-byte big-endian length, then
/// that many bytes, and may be split across frames anywhere.
struct LimitedBody<B> {
    inner: B,
    limit: usize,
    /// The prefix of the next message, as far as it has arrived.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl<B> LimitedBody<B> {
    fn new(inner: B, limit: usize) -> Self {
        Self { inner, limit, prefix: [0; 5], prefix_len: 0, remaining: 0 }
    }

    /// Follows the message boundaries through `data`; the length of the
    /// first message over the limit, if any.
    fn scan(&mut self, mut data: &[u8]) -> Option<usize> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len());
                self.remaining -= skip;
                data = &data[skip..];
                continue;
            }
            let take = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let len = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]) as usize;
                if len > self.limit {
                    return Some(len);
                }
                self.remaining = len;
            }
        }
        None
    }
}

impl<B> HttpBody for LimitedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(len) = frame.data_ref().and_then(|data| self.scan(data)) {
                    let limit = self.limit;
                    let status = crate::errors::too_large(
                        crate::errors::reason::MESSAGE_TOO_LARGE,
                        format!("request message is {len} bytes, the limit is {limit} bytes"),
                        limit,
                    );
                    return Poll::Ready(Some(Err(Box::new(status))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            other => other.map(|frame| frame.map(|result| result.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::LimitedBody;

    /// A gRPC message of `len` bytes with its prefix.
    fn message(len: usize) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        bytes.resize(5 + len, 7);
        bytes
    }

    #[test]
    fn finds_an_oversized_message_however_the_frames_split_it() {
        let stream: Vec<u8> = [message(10), message(0), message(100), message(101)].concat();
        for chunk in 1..=stream.len() {
            let mut body = LimitedBody::new((), 100);
            let found = stream.chunks(chunk).find_map(|data| body.scan(data));
            assert_eq!(found, Some(101), "chunks of {chunk}");
        }
        let mut body = LimitedBody::new((), 100);
        assert_eq!(stream[..stream.len() - 101 - 5].chunks(3).find_map(|data| body.scan(data)), None);
    }
}
