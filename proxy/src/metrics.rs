//! The ingress's Prometheus metrics: requests by app and status, and latency by app.
//!
//! Label values are bounded: requests for names that are not deployed apps are counted under
//! `app="-"`, so a client cannot create series by inventing names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The app label used for requests that matched no deployed app.
pub const NO_APP: &str = "-";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    app: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

/// Counters and histograms the ingress updates once per response.
#[derive(Clone, Debug)]
pub struct IngressMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<AppLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
}

/// Counts one request in flight until dropped (with the response body).
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~1.6 s: static files at the bottom, cold starts at the top.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

impl IngressMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Gauge::default(),
        };
        registry.register(
            "shoal_http_requests_in_flight",
            "Requests the ingress is answering now (until their response body ends)",
            metrics.in_flight.clone(),
        );
        registry.register(
            "shoal_http_requests",
            "HTTP requests answered by the ingress, by app and status",
            metrics.requests.clone(),
        );
        registry.register(
            "shoal_http_request_duration_seconds",
            "Time from request to response headers, by app",
            metrics.latency.clone(),
        );
        metrics
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn enter(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Requests in flight now (the load a node gossips).
    pub fn in_flight(&self) -> u64 {
        u64::try_from(self.in_flight.get()).unwrap_or(0)
    }

    /// Records one answered request.
    pub fn observe(&self, app: &str, status: u16, seconds: f64) {
        let app = app.to_owned();
        self.requests
            .get_or_create(&RequestLabels {
                app: app.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&AppLabels { app })
            .observe(seconds);
    }
}
