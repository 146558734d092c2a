//! TLS and basic auth for the agent's endpoint, from a web config file in
//! the format of the Prometheus exporter-toolkit (`--web-config FILE`,
//! `web_config` in kato.toml), so one file serves kato and node_exporter:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt
//!   key_file: server.key
//!   client_ca_file: ca.crt           # optional
//!   client_auth_type: RequireAndVerifyClientCert
//!   min_version: TLS12               # TLS12 (default) or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...           # bcrypt
//! ```
//!
//! Relative paths are relative to the file, as in exporter-toolkit. Keys
//! kato does not implement are errors, never silently ignored.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use yaml_rust2::{Yaml, YamlLoader};

use super::config::ConfigError;

/// Who must present a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    /// Verified against `client_ca_file` when given; none is fine.
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    pub tls: Option<TlsSettings>,
    /// user -> bcrypt hash.
    pub users: BTreeMap<String, String>,
}

impl WebConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = super::config::read_file(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&path.display().to_string(), &text, dir)
    }

    /// Parses `text`; relative paths are taken from `dir`.
    pub fn parse(origin: &str, text: &str, dir: &Path) -> Result<Self, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            origin: origin.into(),
            key: key.into(),
            message,
        };
        if has_alias(text).map_err(|e| err("(syntax)", e.to_string()))? {
            // Each alias is a copy when loaded: nested ones make a 1 KB file
            // a gigabyte (the "billion laughs"). Web configs need none.
            return Err(err(
                "(file)",
                "YAML aliases (*name) are not supported in a web config".into(),
            ));
        }
        let docs = YamlLoader::load_from_str(text).map_err(|e| err("(syntax)", e.to_string()))?;
        let mut cfg = WebConfig::default();
        let Some(doc) = docs.into_iter().next() else {
            return Ok(cfg);
        };
        let top = match doc {
            Yaml::Hash(h) => h,
            Yaml::Null => return Ok(cfg),
            _ => return Err(err("(file)", "expected a mapping".into())),
        };
        for (k, v) in top {
            let key = key_name(&k);
            match key.as_str() {
                "tls_server_config" => cfg.tls = Some(tls(&v, dir, &err)?),
                "basic_auth_users" => {
                    let Yaml::Hash(users) = v else {
                        return Err(err(&key, "expected a mapping of user: bcrypt hash".into()));
                    };
                    for (u, h) in users {
                        let (Some(u), Some(h)) = (u.as_str(), h.as_str()) else {
                            return Err(err(&key, "users and hashes must be strings".into()));
                        };
                        if h.parse::<bcrypt::HashParts>().is_err() {
                            return Err(err(
                                &format!("basic_auth_users.{u}"),
                                "not a bcrypt hash (htpasswd -nBC 10 USER)".into(),
                            ));
                        }
                        cfg.users.insert(u.to_owned(), h.to_owned());
                    }
                }
                _ => {
                    return Err(err(
                        &key,
                        "unknown or unsupported key (kato supports tls_server_config and basic_auth_users)"
                            .into(),
                    ))
                }
            }
        }
        Ok(cfg)
    }
}

/// Whether the YAML text uses an alias, found in its event stream (which
/// does not expand them).
fn has_alias(text: &str) -> Result<bool, yaml_rust2::ScanError> {
    struct Aliases(bool);
    impl yaml_rust2::parser::EventReceiver for Aliases {
        fn on_event(&mut self, ev: yaml_rust2::parser::Event) {
            self.0 |= matches!(ev, yaml_rust2::parser::Event::Alias(_));
        }
    }
    let mut seen = Aliases(false);
    yaml_rust2::parser::Parser::new_from_str(text).load(&mut seen, true)?;
    Ok(seen.0)
}

/// A mapping key as the error names it (YAML allows non-string keys).
fn key_name(k: &Yaml) -> String {
    match k.as_str() {
        Some("") => "\"\"".to_owned(),
        Some(s) => s.to_owned(),
        None => format!("{k:?}"),
    }
}

fn tls(
    v: &Yaml,
    dir: &Path,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<TlsSettings, ConfigError> {
    let Yaml::Hash(h) = v else {
        return Err(err("tls_server_config", "expected a mapping".into()));
    };
    let (mut cert, mut key, mut ca, mut auth, mut min) = (
        None,
        None,
        None,
        ClientAuth::NoClientCert,
        TlsVersion::Tls12,
    );
    for (k, v) in h {
        let name = format!("tls_server_config.{}", key_name(k));
        let s = v
            .as_str()
            .ok_or_else(|| err(&name, "expected a string".into()))?;
        let path = || dir.join(s);
        match k.as_str().unwrap_or_default() {
            "cert_file" => cert = Some(path()),
            "key_file" => key = Some(path()),
            "client_ca_file" => ca = Some(path()),
            "client_auth_type" => {
                auth = match s {
                    "NoClientCert" => ClientAuth::NoClientCert,
                    "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
                    "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
                    "RequestClientCert" | "RequireAnyClientCert" => {
                        return Err(err(&name, format!("`{s}` accepts unverified certificates; kato supports NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert")))
                    }
                    _ => return Err(err(&name, format!("unknown client_auth_type `{s}`"))),
                }
            }
            "min_version" => {
                min = match s {
                    "TLS12" => TlsVersion::Tls12,
                    "TLS13" => TlsVersion::Tls13,
                    _ => return Err(err(&name, format!("`{s}`: kato speaks TLS12 and TLS13"))),
                }
            }
            _ => return Err(err(&name, "unknown or unsupported key".into())),
        }
    }
    let need = |v: Option<PathBuf>, k: &str| {
        v.ok_or_else(|| err(&format!("tls_server_config.{k}"), "required".into()))
    };
    let settings = TlsSettings {
        cert_file: need(cert, "cert_file")?,
        key_file: need(key, "key_file")?,
        client_ca_file: ca,
        client_auth: auth,
        min_version: min,
    };
    if settings.client_auth != ClientAuth::NoClientCert && settings.client_ca_file.is_none() {
        return Err(err(
            "tls_server_config.client_ca_file",
            "required to verify client certificates".into(),
        ));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig, ConfigError> {
        WebConfig::parse("web.yml", text, Path::new("/etc/kato"))
    }

    #[test]
    fn exporter_toolkit_format() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let c = parse(&format!(
            "tls_server_config:\n  cert_file: s.crt\n  key_file: /k/s.key\n  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\nbasic_auth_users:\n  prom: {hash}\n",
        ))
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(
            t.cert_file,
            Path::new("/etc/kato/s.crt"),
            "relative to the file"
        );
        assert_eq!(t.key_file, Path::new("/k/s.key"));
        assert_eq!(t.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(t.min_version, TlsVersion::Tls13);
        assert_eq!(c.users.len(), 1);
        assert_eq!(parse("").unwrap(), WebConfig::default());
    }

    #[test]
    fn every_mistake_names_its_key() {
        for (text, key) in [
            ("tls_server_config:\n  cert_file: a\n", "tls_server_config.key_file"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n", "tls_server_config.client_auth_type"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n", "tls_server_config.client_ca_file"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n", "tls_server_config.cipher_suites"),
            ("basic_auth_users:\n  prom: hunter2\n", "basic_auth_users.prom"),
            ("http_server_config:\n  http2: true\n", "http_server_config"),
            ("[1, 2]", "(file)"),
            ("1: x", "Integer(1)"),
            ("\"\": x", "\"\""),
            ("a: [", "(syntax)"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
    }

    #[test]
    fn aliases_are_refused_before_they_expand() {
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n";
        let e = WebConfig::parse("web.yml", bomb, Path::new(".")).unwrap_err();
        assert!(e.message.contains("aliases"), "{e}");
    }
}
