//! `/sockets` query strings: the same filters as `kato sockets`, plus
//! paging. Untrusted input: every value is parsed, unknown keys refused.

use std::str::FromStr;

use thiserror::Error;

use crate::{
    filter::{Filter, SortKey},
    invalid::Invalid,
    tcp::TcpState,
};

/// What is wrong with a `/sockets` query (the 400's body).
#[derive(Debug, Error)]
pub enum QueryError {
    #[error("bad query encoding")]
    Encoding,
    #[error("unknown parameter `{0}` ({keys})", keys = KEYS.join(", "))]
    UnknownParameter(String),
    #[error(
        "{0} parameters (at most {MAX_VALUES} filter values, and sort, limit, cursor, history)"
    )]
    TooMany(usize),
    #[error("bad `{key}` value: {why}")]
    Value { key: &'static str, why: Invalid },
    #[error("{0}: /history takes local and remote, each ADDR:PORT (IPv6 in brackets)")]
    Ends(String),
}

const KEYS: [&str; 18] = [
    "state",
    "port",
    "sport",
    "dport",
    "comm",
    "addr",
    "pid",
    "netns",
    "keepalive",
    "risk",
    "pod",
    "pod_namespace",
    "container",
    "unit",
    "sort",
    "limit",
    "cursor",
    "history",
];

fn bad(key: &'static str) -> impl Fn(Invalid) -> QueryError {
    move |why| QueryError::Value { key, why }
}

/// Sockets per page unless `limit=` says otherwise, and the most it may say.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;
/// Filter values in one request at most: each costs a comparison per
/// socket, under the engine's lock (64 over 100,000 sockets: ~6 ms).
pub const MAX_VALUES: usize = 64;

/// A `/sockets` request: which sockets, in what order, which page.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketsQuery {
    pub filter: Filter,
    /// `none` pages in local-address order: a cursor needs a total order,
    /// which the table's own order is not across snapshots.
    pub sort: SortKey,
    /// Sockets in this page.
    pub limit: usize,
    /// Sockets to skip: the `cursor` of the previous page.
    pub offset: usize,
    /// Each row with its story (`history=1`), as `/sockets/COOKIE/history`
    /// serves it (null where the agent has none).
    pub history: bool,
}

/// Every `%` starts a two-digit hex escape.
fn valid_escapes(qs: &str) -> bool {
    let b = qs.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Decodes a query string (`a=1&b=%3A%3A1`); malformed escapes and
/// non-UTF-8 bytes are errors (form_urlencoded alone would turn them into
/// U+FFFD, matching nothing, silently).
pub fn parse_query(qs: &str) -> Result<Vec<(String, String)>, QueryError> {
    if !valid_escapes(qs) {
        return Err(QueryError::Encoding);
    }
    let query: Vec<(String, String)> = form_urlencoded::parse(qs.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if query
        .iter()
        .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
    {
        return Err(QueryError::Encoding);
    }
    Ok(query)
}

fn parse_all<T: FromStr>(
    key: &'static str,
    values: &[&str],
    expected: &'static str,
) -> Result<Vec<T>, QueryError> {
    values
        .iter()
        .map(|v| {
            v.parse()
                .map_err(|_| bad(key)(Invalid::not_a(*v, expected)))
        })
        .collect()
}

/// `/sockets?state=established&port=5432&keepalive=on&sort=idle&limit=100`:
/// the same filters as `kato sockets`, repeat a key to allow several values;
/// `limit` (default 1000, at most 10000) and `cursor` (from the previous
/// page's `Kato-Next-Cursor` header) page through large tables.
pub fn query_from(params: &[(String, String)]) -> Result<SocketsQuery, QueryError> {
    let get = |k: &str| {
        params
            .iter()
            .filter(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    if let Some((k, _)) = params.iter().find(|(k, _)| !KEYS.contains(&k.as_str())) {
        return Err(QueryError::UnknownParameter(k.clone()));
    }
    if params.len() > MAX_VALUES + 4 {
        return Err(QueryError::TooMany(params.len()));
    }
    let mut q = SocketsQuery {
        limit: DEFAULT_LIMIT,
        ..SocketsQuery::default()
    };
    let f = &mut q.filter;
    f.states = get("state")
        .iter()
        .map(|s| TcpState::parse(s).ok_or_else(|| bad("state")(Invalid::not_a(*s, "a TCP state"))))
        .collect::<Result<_, _>>()?;
    f.ports = parse_all("port", &get("port"), "a port")?;
    f.sports = parse_all("sport", &get("sport"), "a port")?;
    f.dports = parse_all("dport", &get("dport"), "a port")?;
    f.addrs = parse_all(
        "addr",
        &get("addr"),
        "an IP address or network (10.0.0.0/8)",
    )?;
    f.pids = parse_all("pid", &get("pid"), "a pid")?;
    f.netns = parse_all("netns", &get("netns"), "a namespace inode")?;
    let names = |k| get(k).into_iter().map(str::to_owned).collect();
    f.pods = names("pod");
    f.pod_namespaces = names("pod_namespace");
    f.containers = names("container");
    f.units = names("unit");
    f.comms = names("comm");
    f.keepalive = match get("keepalive").as_slice() {
        [] => None,
        ["on"] => Some(true),
        ["off"] => Some(false),
        other => {
            return Err(bad("keepalive")(Invalid::not_a(
                other.join(","),
                "on or off (once)",
            )))
        }
    };
    f.risks = get("risk")
        .iter()
        .map(|r| {
            crate::policy::Risk::parse(r).ok_or_else(|| {
                bad("risk")(Invalid::unknown(
                    "risk class",
                    *r,
                    "safe, at-risk, unprotected, forgotten, unknown",
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    if let Some(s) = get("sort").last() {
        q.sort = s.parse::<SortKey>().map_err(bad("sort"))?;
    }
    if let Some(l) = get("limit").last() {
        q.limit = l
            .parse()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| bad("limit")(Invalid::not_a(*l, format!("1 to {MAX_LIMIT}"))))?;
    }
    q.history = match get("history").as_slice() {
        [] | ["0"] => false,
        ["1"] => true,
        other => {
            return Err(bad("history")(Invalid::not_a(
                other.join(","),
                "1 or 0 (once)",
            )))
        }
    };
    if let Some(c) = get("cursor").last() {
        q.offset = c
            .parse()
            .map_err(|_| bad("cursor")(Invalid::not_a(*c, "a cursor")))?;
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_refuses_bad_escapes() {
        assert_eq!(
            parse_query("state=established&addr=%3A%3A1&port=5432").unwrap(),
            [
                ("state".into(), "established".into()),
                ("addr".into(), "::1".into()),
                ("port".into(), "5432".into())
            ]
        );
        assert!(parse_query("a=%zz").is_err());
        assert!(parse_query("a=%4").is_err());
        assert!(parse_query("a=%ff").is_err(), "not UTF-8");
        assert_eq!(parse_query("").unwrap(), []);
    }

    #[test]
    fn query_parameters_like_the_cli() {
        let p = |s: &str| parse_query(s).unwrap();
        let q = query_from(&p(
            "state=time-wait&port=1&port=2&keepalive=off&sort=idle&risk=at-risk",
        ))
        .unwrap();
        assert_eq!(q.filter.risks, [crate::policy::Risk::AtRisk]);
        assert!(query_from(&p("risk=doomed"))
            .unwrap_err()
            .to_string()
            .contains("`doomed`"));
        assert_eq!(q.filter.states, [TcpState::TimeWait]);
        assert_eq!(q.filter.ports, [1, 2]);
        assert_eq!(q.filter.keepalive, Some(false));
        assert_eq!(q.sort, SortKey::Idle);
        assert_eq!((q.limit, q.offset), (DEFAULT_LIMIT, 0));
        assert!(query_from(&p("port=http"))
            .unwrap_err()
            .to_string()
            .contains("`port`"));
        assert!(query_from(&p("keepalive=maybe")).is_err());
        let q = query_from(&p("sport=80&dport=5432&comm=nginx&addr=10.0.0.0/8")).unwrap();
        assert_eq!((q.filter.sports, q.filter.dports), (vec![80], vec![5432]));
        assert_eq!(q.filter.comms, ["nginx"]);
        assert_eq!(q.filter.addrs, ["10.0.0.0/8".parse().unwrap()]);
        assert!(query_from(&p("colour=red"))
            .unwrap_err()
            .to_string()
            .contains("unknown parameter `colour`"));
        assert!(query_from(&p("sort=random")).is_err());
    }

    #[test]
    fn filter_values_are_capped() {
        let many = |n: usize| vec!["addr=%3A%3A"; n].join("&");
        assert!(query_from(&parse_query(&many(MAX_VALUES)).unwrap()).is_ok());
        let e = query_from(&parse_query(&many(8100)).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 64"), "{e}");
    }

    #[test]
    fn pages() {
        let q = query_from(&parse_query("limit=50&cursor=100").unwrap()).unwrap();
        assert_eq!((q.limit, q.offset), (50, 100));
        for bad in ["limit=0", "limit=10001", "limit=x", "cursor=-1"] {
            assert!(query_from(&parse_query(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
