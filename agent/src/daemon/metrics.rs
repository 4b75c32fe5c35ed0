//! The Prometheus endpoint (`[metrics] listen`, `GET /metrics`): the agent's identity and
//! liveness, network repairs, and the health snapshot (docs/health.md), as Prometheus text.
//! Any local user can connect, so the endpoint bounds what it holds: [`MAX_CONNECTIONS`]
//! connections at once, each closed when its request head is slow ([`HEADER_READ_TIMEOUT`]) or
//! when it is old ([`CONNECTION_LIFETIME`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::health::Health;
use crate::health::exposition::{Exposition, Type};
use hvagent_core::counts::KindCounts;

/// The metrics the agent exposes.
pub struct Metrics {
    up: AtomicBool,
    start_unix: u64,
    /// Network repairs by kind (`hvagent_network_repairs_total`).
    pub network_repairs: KindCounts,
    /// Guests started after a host reboot, by result (`hvagent_guests_resumed_total`).
    pub guests_resumed: KindCounts,
    /// Set once the sampler runs (after start-up has reached libvirt).
    health: OnceLock<Arc<Health>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            up: AtomicBool::new(false),
            start_unix: hvagent_core::now_unix(),
            network_repairs: KindCounts::default(),
            guests_resumed: KindCounts::default(),
            health: OnceLock::new(),
        }
    }

    /// Whether the agent serves its API (`hvagent_up`).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn attach(&self, health: Arc<Health>) {
        let _ = self.health.set(health);
    }

    pub fn render(&self) -> String {
        let mut e = Exposition::default();
        e.family(
            "hvagent_build_info",
            Type::Gauge,
            "Version of the running agent",
        )
        .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        e.family(
            "hvagent_up",
            Type::Gauge,
            "1 while the agent serves its API, 0 while stopping",
        )
        .sample(&[], f64::from(u8::from(self.up.load(Ordering::Relaxed))));
        e.family(
            "hvagent_start_time_seconds",
            Type::Gauge,
            "When the agent started, in Unix seconds",
        )
        .sample(&[], self.start_unix as f64);
        e.family(
            "hvagent_network_repairs_total",
            Type::Counter,
            "Repairs made to the host's networks to match their specs, by kind",
        );
        for (kind, n) in self.network_repairs.get() {
            e.sample(&[("kind", &kind)], n as f64);
        }
        e.family(
            "hvagent_guests_resumed_total",
            Type::Counter,
            "Starts of guests wanted running after a host reboot, by result",
        );
        for (result, n) in self.guests_resumed.get() {
            e.sample(&[("result", &result)], n as f64);
        }
        if let Some(health) = self.health.get() {
            crate::health::prometheus::render(&health.latest(), &mut e);
        }
        e.finish()
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

/// Connections served at once; beyond, new ones are closed at once. A scrape takes one for a
/// few milliseconds: this is room for many scrapers, and what bounds the descriptors (and
/// memory) any local user can make the agent hold through this port.
pub const MAX_CONNECTIONS: usize = 64;

/// A client has this long from connecting (or from its previous answer) to send a whole
/// request head; one that sends nothing, or a byte at a time, is closed then.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a connection is kept, busy or not: one that reads its answer slowly, or keeps
/// asking, cannot hold a slot for longer.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Refused connections are logged at most this often (a flood must not flood the log).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(%remote, limit = MAX_CONNECTIONS, "metrics: too many connections; closing new ones (logged at most every 10 s)");
            }
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "metrics: connection ended with an error")
                }
                Err(_) => tracing::debug!(%remote, "metrics: connection closed after its lifetime"),
            }
        });
    }
}

fn respond<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
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
        m.set_up(true);
        m.network_repairs.inc("bridge_created");
        m.guests_resumed.inc("started");
        let text = m.render();
        assert!(text.contains("hvagent_build_info{version=\""), "{text}");
        assert!(text.contains("hvagent_up 1"), "{text}");
        assert!(
            text.contains("# TYPE hvagent_start_time_seconds gauge"),
            "{text}"
        );
        assert!(
            text.contains("hvagent_network_repairs_total{kind=\"bridge_created\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hvagent_guests_resumed_total{result=\"started\"} 1"),
            "{text}"
        );
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
