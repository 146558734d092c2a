//! The `Host` allow-list: a browser page on another origin can make a
//! browser send requests to a loopback listener (DNS rebinding points a
//! name the page controls at 127.0.0.1); such requests carry that name as
//! `Host`. kato answers only to IP literals, `localhost`, the node's own
//! names and the names configured (`allowed_hosts`).

use std::net::IpAddr;

#[derive(Debug, Clone, Default)]
pub struct HostAllow {
    /// Lower case, no port, no trailing dot.
    names: Vec<String>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The name part of a `Host` header value (`[::1]:80` -> `::1`).
fn host_part(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match value.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => value,
    }
}

/// This node's host name and, when the kernel has one, its domain.
fn node_names() -> Vec<String> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && s != "(none)")
    };
    let mut names = vec![];
    if let Some(host) = read("/proc/sys/kernel/hostname") {
        if let Some(domain) = read("/proc/sys/kernel/domainname") {
            names.push(format!("{host}.{domain}"));
        }
        names.push(host);
    }
    names
}

impl HostAllow {
    /// `localhost`, this node's names and `extra`.
    pub fn new(extra: &[String]) -> Self {
        let mut names: Vec<String> = ["localhost".to_owned()]
            .into_iter()
            .chain(node_names())
            .chain(extra.iter().cloned())
            .map(|n| normalize(&n))
            .collect();
        names.sort();
        names.dedup();
        Self { names }
    }

    /// Is a request with this `Host` value meant for kato?
    pub fn allows(&self, value: &str) -> bool {
        let host = host_part(value.trim());
        if host.parse::<IpAddr>().is_ok() {
            return true;
        }
        let host = normalize(host);
        !host.is_empty() && self.names.contains(&host)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_localhost_and_configured_names_only() {
        let a = HostAllow::new(&["Kato.Example.COM".into()]);
        for ok in [
            "127.0.0.1:7941",
            "127.0.0.1",
            "[::1]:7941",
            "[fe80::1]",
            "localhost:7941",
            "LOCALHOST.",
            "kato.example.com:443",
        ] {
            assert!(a.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:7941",
            "",
            ":7941",
            "localhost.evil",
            "127.0.0.1.nip.io",
        ] {
            assert!(!a.allows(bad), "{bad}");
        }
    }
}
