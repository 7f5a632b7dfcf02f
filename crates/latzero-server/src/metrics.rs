//! The metrics port (`--metrics-port`), for Prometheus and probes, over plain HTTP/1.1:
//! - `GET /metrics`: the counters (`latzero_<name>_total`), gauges (connections, calls in flight,
//!   pools, apps, blocks, uptime) and the call latency histogram, in Prometheus's text format;
//! - `GET /healthz`: the health checks (`health.rs`) as JSON, 200 when every one passed, else 503.
//!
//! One request per connection (`Connection: close`); the request head is read within the
//! handshake timeout and up to [`MAX_HEAD`] bytes. A request with an `Origin` (a web page's) is
//! refused. With `--require-auth` both need an admin credential as `Authorization: Bearer <token
//! or JWT>`, as every admin request does.
//!
//! The latency histogram is kept only while this port is served: its clock read per call is
//! the one cost a call pays for it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use latzero_proto::message::Credential;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::server::State;
use crate::transport::Listener;

/// The longest request head read (request line and headers).
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// The histogram's bucket bounds, seconds: from a local call's tens of microseconds to the
/// default ttl's tens of seconds.
const BOUNDS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0, 30.0,
];

/// [`BOUNDS`] in nanoseconds, for the per-call search (integers, halving: five compares).
const BOUNDS_NS: [u64; 18] = {
    let mut ns = [0u64; 18];
    let mut i = 0;
    while i < BOUNDS.len() {
        ns[i] = (BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// Call latency: from when the server read a call to when it routed the handler's answer.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// Per bucket (not cumulative), the last one past every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Latency {
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // The first bound at or above `ns` (Prometheus buckets are `le`); past them all, +Inf.
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let name = "latzero_call_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Calls answered by a handler: from when the server read the call to when it routed the answer.\n# TYPE {name} histogram"
        );
        let mut total = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            match BOUNDS.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
                }
            }
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

/// The metrics port's listener.
#[derive(Debug)]
pub(crate) struct MetricsListener(pub TcpListener);

impl Listener for MetricsListener {
    type Stream = TcpStream;
    const KIND: &'static str = "metrics";

    async fn accept(&self) -> std::io::Result<(TcpStream, String)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((stream, peer.to_string()))
    }

    fn serve(state: &Arc<State>, stream: TcpStream, peer: String, tracker: &TaskTracker) {
        tracker.spawn(serve(state.clone(), stream, peer));
    }
}

/// An HTTP answer: status line, content type, body.
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn text(status: &'static str, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

async fn serve(state: Arc<State>, mut stream: TcpStream, peer: String) {
    let patience = state.config.limits.handshake_timeout;
    let answer = match tokio::time::timeout(patience, read_head(&mut stream)).await {
        Err(_) => Answer::text("408 Request Timeout", "no request within the handshake timeout\n"),
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "metrics request not read");
            return;
        }
        Ok(Ok(None)) => Answer::text(
            "431 Request Header Fields Too Large",
            format!("a request head is at most {MAX_HEAD} bytes\n"),
        ),
        Ok(Ok(Some(head))) => answer(&state, &head).await,
    };
    let head = format!(
        "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(answer.body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The request head, up to its blank line; `None` past [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match buf.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) if end + 4 <= MAX_HEAD => return Ok(Some(buf)),
            _ if buf.len() > MAX_HEAD => return Ok(None),
            _ => {}
        }
    }
}

async fn answer(state: &Arc<State>, head: &[u8]) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Answer::text("431 Request Header Fields Too Large", "at most 32 headers are read\n");
        }
        _ => return Answer::text("400 Bad Request", "not an HTTP/1.1 request\n"),
    }
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    if req.method != Some("GET") {
        return Answer::text("405 Method Not Allowed", "only GET is served\n");
    }
    if !matches!(path, "/metrics" | "/healthz") {
        return Answer::text("404 Not Found", "served here: /metrics, /healthz\n");
    }
    // A browser names the page behind a cross-site request: a page the user opens has no
    // business here (and /healthz writes, so even an unread answer is a side effect).
    if req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("origin")) {
        return Answer::text(
            "403 Forbidden",
            "requests from web pages (with an Origin) are refused here\n",
        );
    }
    let bearer = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|v| credential(v.trim()));
    // Asked as an admin request (no app): a credential that is not an admin one is refused.
    if let Err(why) = state.auth.check(bearer.as_ref(), None) {
        return Answer::text(
            "401 Unauthorized",
            format!("{why}; give an admin credential as `Authorization: Bearer <token or JWT>`\n"),
        );
    }
    if path == "/healthz" {
        let mut h = crate::health::check(state).await;
        let healthy = h["healthy"] == true;
        if let Some(m) = h.as_object_mut() {
            m.remove("action");
        }
        return Answer {
            status: if healthy { "200 OK" } else { "503 Service Unavailable" },
            content_type: "application/json",
            body: format!("{h}\n"),
        };
    }
    Answer {
        status: "200 OK",
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: render(state),
    }
}

/// A bearer value as a credential: a JWT is three base64url parts joined by dots, a static
/// token anything else.
fn credential(v: &str) -> Credential {
    if v.starts_with("eyJ") && v.matches('.').count() == 2 {
        Credential::Jwt(v.to_owned())
    } else {
        Credential::Token(v.to_owned())
    }
}

/// Every metric, in Prometheus's text format.
pub(crate) fn render(state: &State) -> String {
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP latzero_{name} {help}\n# TYPE latzero_{name} gauge\nlatzero_{name} {v}"
        );
    };
    let _ = writeln!(
        out,
        "# HELP latzero_build_info The server's version and protocol version.\n# TYPE latzero_build_info gauge\nlatzero_build_info{{version=\"{}\",protocol=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        latzero_proto::PROTOCOL_VERSION
    );
    let g = state.gauges();
    gauge(
        &mut out,
        "uptime_seconds",
        "Seconds since the server started.",
        g.uptime.as_secs_f64(),
    );
    gauge(&mut out, "connections", "Open connections.", g.connections as f64);
    gauge(
        &mut out,
        "calls_in_flight",
        "Calls handed to a handler and not answered yet.",
        g.calls_in_flight as f64,
    );
    gauge(&mut out, "pools", "Live pools.", g.pools as f64);
    gauge(
        &mut out,
        "apps_connected",
        "Apps connected (handshaken).",
        g.apps as f64,
    );
    gauge(&mut out, "memory_blocks", "Memory blocks.", g.blocks as f64);
    for (name, help, v) in state.counters.described() {
        let stem = name.strip_suffix("_total").unwrap_or(name);
        let metric = format!("latzero_{stem}_total");
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter\n{metric} {v}");
    }
    if let Some(l) = &state.router.latency {
        l.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_with_sum_and_count() {
        let l = Latency::default();
        l.observe(Duration::from_micros(40));
        l.observe(Duration::from_micros(40));
        l.observe(Duration::from_millis(3));
        l.observe(Duration::from_secs(60));
        let mut out = String::new();
        l.render(&mut out);
        assert!(
            out.contains("latzero_call_duration_seconds_bucket{le=\"0.000025\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("latzero_call_duration_seconds_bucket{le=\"0.00005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("latzero_call_duration_seconds_bucket{le=\"0.0025\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("latzero_call_duration_seconds_bucket{le=\"0.005\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("latzero_call_duration_seconds_bucket{le=\"30\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("latzero_call_duration_seconds_bucket{le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("latzero_call_duration_seconds_count 4\n"), "{out}");
        assert!(out.contains("latzero_call_duration_seconds_sum 60.00308\n"), "{out}");
    }

    #[test]
    fn bearer_values_are_told_apart() {
        assert!(matches!(credential("eyJhbGciOi.eyJzdWIiOi.c2ln"), Credential::Jwt(_)));
        assert!(matches!(credential("0f3a9c"), Credential::Token(_)));
        assert!(matches!(credential("eyJ.only-one-dot"), Credential::Token(_)));
    }
}
