//! The tower layer every inbound gRPC call passes through: it records
//! `rpc.server.duration` per method and status code.

use std::{
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use telemetry::metrics::{self, HistogramVec, Name, Registry};
use tower::{Layer, Service};

/// Records `rpc.server.duration` (seconds, as `rpc_server_duration_seconds`)
/// with `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code`.
/// The duration runs until the response headers: the whole call for unary
/// RPCs. The status is the `grpc-status` of a trailers-only response (how
/// tonic answers an error) and OK otherwise, so a stream that fails after its
/// first message counts as OK.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    duration: HistogramVec,
}

impl RpcMetricsLayer {
    pub fn new(registry: &Registry) -> Self {
        let duration = metrics::histogram_vec(
            registry,
            Name { prometheus: "rpc_server_duration_seconds", otel: "rpc.server.duration", unit: "s" },
            "Duration of inbound gRPC calls",
            &["rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code"],
            metrics::LATENCY_BUCKETS,
        );
        Self { duration }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner, duration: self.duration.clone() }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    duration: HistogramVec,
}

impl<S, B, R> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let started = Instant::now();
        let duration = self.duration.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0),
                // UNKNOWN: the transport answers for us.
                Err(_) => 2,
            };
            duration
                .with_label_values(&["grpc", &service, &method, &code.to_string()])
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// `/pkg.Service/Method` into its service and method; anything else is `unknown`
/// (keeps label values bounded).
fn split_path(path: &str) -> (String, String) {
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() && !method.contains('/') => {
            (service.to_owned(), method.to_owned())
        }
        _ => ("unknown".to_owned(), "unknown".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            split_path("/pulse.orders.v1.OrderService/CreateOrder"),
            ("pulse.orders.v1.OrderService".to_owned(), "CreateOrder".to_owned())
        );
        assert_eq!(split_path("/favicon.ico"), ("unknown".to_owned(), "unknown".to_owned()));
    }
}
