//! The Prometheus endpoint (`[metrics] listen`, `GET /metrics`). It serves the agent's identity
//! and liveness; host and guest metrics join the same registry as they are added.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The metrics the agent exposes.
pub struct Metrics {
    registry: Registry,
    /// 1 while the API serves, 0 once the agent is stopping.
    pub up: Gauge,
    /// Network repairs by kind (`hvagent_network_repairs_total`).
    pub network_repairs: Family<crate::net::RepairLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hvagent");
        registry.register(
            "build",
            "Version of the running agent",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let up = Gauge::default();
        registry.register(
            "up",
            "1 while the agent serves its API, 0 while stopping",
            up.clone(),
        );
        let start = Gauge::<i64>::default();
        start.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        );
        registry.register(
            "start_time_seconds",
            "When the agent started, in Unix seconds",
            start,
        );
        let network_repairs = Family::default();
        registry.register(
            "network_repairs",
            "Repairs made to the host's networks to match their specs, by kind",
            network_repairs.clone(),
        );
        Self {
            registry,
            up,
            network_repairs,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Binds the endpoint; failing here (address in use, not local) stops start-up with the reason.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics: connection ended with an error");
            }
        });
    }
}

fn respond<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_follow_conventions() {
        let m = Metrics::new();
        m.up.set(1);
        let text = m.render();
        assert!(text.contains("hvagent_build_info{version=\""), "{text}");
        assert!(text.contains("hvagent_up 1"), "{text}");
        assert!(
            text.contains("# TYPE hvagent_start_time_seconds gauge"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn only_get_metrics() {
        let m = Metrics::new();
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert_eq!(respond(&get("/metrics"), &m).status(), StatusCode::OK);
        assert_eq!(respond(&get("/"), &m).status(), StatusCode::NOT_FOUND);
        let post = Request::post("/metrics").body(()).unwrap();
        assert_eq!(respond(&post, &m).status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
