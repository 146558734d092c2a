//! OpenTelemetry export (`--otlp-endpoint`): the metrics and the reported
//! events (as log records) over OTLP/HTTP with protobuf bodies.
//!
//! The engine turns its registry and its queued events into OTLP messages
//! ([`metrics`], [`logs`]); the unprivileged HTTP process asks for them
//! over its own socket pair and posts them ([`export`]), so the engine
//! still reads no byte from the network. A collector that is down costs
//! failed posts, counted, and never a wait on the event path: the event
//! queue is bounded and drops its oldest, counted.

pub mod export;
pub mod logs;
pub mod metrics;
pub mod source;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::invalid::Invalid;

pub use opentelemetry_proto::tonic as proto;
use proto::{
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    resource::v1::Resource,
};

/// The environment variable the DaemonSet fills with the node's name
/// (the downward API's spec.nodeName).
pub const NODE_NAME_ENV: &str = "KATO_NODE_NAME";

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "kato".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..InstrumentationScope::default()
    }
}

/// Who sends: the service, the host, and on Kubernetes the node (the
/// semantic conventions' `service.*`, `host.name`, `k8s.node.name`).
pub fn resource(host: &str, node: Option<&str>) -> Resource {
    let mut attributes = vec![
        string_kv("service.name", "kato"),
        string_kv("service.version", env!("CARGO_PKG_VERSION")),
        string_kv("host.name", host),
    ];
    if let Some(n) = node.filter(|n| !n.is_empty()) {
        attributes.push(string_kv("k8s.node.name", n));
    }
    Resource {
        attributes,
        ..Resource::default()
    }
}

/// The two signals kato sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 2] = [Signal::Metrics, Signal::Logs];

    pub fn name(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// The path OTLP/HTTP appends to the endpoint for this signal.
    fn path(self) -> &'static str {
        match self {
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }
}

/// What became of one export the engine handed out: the exporter says so
/// with its next ask, so the counts live where `/metrics` is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub signal: Signal,
    pub ok: bool,
    /// Log records in it (0 for metrics).
    pub records: u64,
}

/// Outcomes one ask reports at most (the exporter asks after each post).
pub const MAX_OUTCOMES: usize = 8;

/// An OTLP/HTTP endpoint: `http://HOST:PORT[/PREFIX]`, to which
/// `/v1/metrics` and `/v1/logs` are appended (the OTLP exporter
/// specification's OTEL_EXPORTER_OTLP_ENDPOINT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Without a trailing `/`; empty for the root.
    pub prefix: String,
}

impl Endpoint {
    /// The request path for `signal`.
    pub fn path(&self, signal: Signal) -> String {
        format!("{}{}", self.prefix, signal.path())
    }

    /// `host:port` as a `Host` header and for resolving (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.prefix)
    }
}

impl std::str::FromStr for Endpoint {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        const WHAT: &str = "an OTLP/HTTP endpoint (http://HOST:PORT)";
        let bad = || Invalid::not_a(s, WHAT);
        if s.starts_with("https://") {
            // No client TLS yet: a node-local collector is the usual hop.
            return Err(Invalid::malformed(
                s,
                "kato sends OTLP over plain http only (no client TLS yet): send to a collector on the node or in the cluster",
            ));
        }
        let rest = s.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        // A path as RFC 3986 allows it (unreserved, sub-delims, `:@/%`).
        let path_char = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c);
        if !prefix.chars().all(path_char) || authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, p) = v6.split_once(']').ok_or_else(bad)?;
                if !p.is_empty() && !p.starts_with(':') {
                    return Err(bad());
                }
                (h, p.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(bad());
        }
        // 4318 is OTLP/HTTP's registered port.
        let port = match port {
            None => 4318,
            Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad)?,
        };
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            prefix: prefix.trim_end_matches('/').to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_names_service_host_and_node() {
        let keys = |r: &Resource| -> Vec<(String, String)> {
            r.attributes
                .iter()
                .map(|kv| {
                    let Some(any_value::Value::StringValue(v)) =
                        kv.value.as_ref().and_then(|v| v.value.clone())
                    else {
                        panic!("{kv:?}")
                    };
                    (kv.key.clone(), v)
                })
                .collect()
        };
        let r = keys(&resource("node-a", Some("worker-1")));
        assert!(r.contains(&("service.name".into(), "kato".into())));
        assert!(r.contains(&("host.name".into(), "node-a".into())));
        assert!(r.contains(&("k8s.node.name".into(), "worker-1".into())));
        let r = keys(&resource("node-a", Some("")));
        assert!(r.iter().all(|(k, _)| k != "k8s.node.name"), "{r:?}");
    }

    #[test]
    fn endpoints_parse_as_the_otlp_exporter_spec_reads_them() {
        let e: Endpoint = "http://127.0.0.1:4318".parse().unwrap();
        assert_eq!(e.path(Signal::Metrics), "/v1/metrics");
        assert_eq!(e.authority(), "127.0.0.1:4318");
        let e: Endpoint = "http://otel-collector.monitoring:4318/otlp/"
            .parse()
            .unwrap();
        assert_eq!(e.host, "otel-collector.monitoring");
        assert_eq!(e.path(Signal::Logs), "/otlp/v1/logs");
        assert_eq!(e.to_string(), "http://otel-collector.monitoring:4318/otlp");
        let e: Endpoint = "http://[::1]/".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 4318));
        assert_eq!(e.authority(), "[::1]:4318");
        for bad in [
            "127.0.0.1:4318",
            "http://",
            "http://:4318",
            "http://h:0",
            "http://h:99999",
            "http://u@h:1",
            "http://h:1/x?y",
            "http://h:1/a b",
            "http://[::1]junk",
            "grpc://h:4317",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
        let https = "https://h:4318"
            .parse::<Endpoint>()
            .unwrap_err()
            .to_string();
        assert!(https.contains("plain http only"), "{https}");
    }
}
