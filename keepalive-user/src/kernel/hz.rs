//! CONFIG_HZ of the running kernel: turns timer deadlines (jiffies) into time.

use std::io::Read as _;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum HzError {
    #[error("cannot find the kernel's CONFIG_HZ: no /proc/config.gz or /boot/config-{release} (pass --hz)")]
    NoConfig { release: String },
    #[error("kernel config has no valid CONFIG_HZ line")]
    NoHz,
}

/// `CONFIG_HZ=N` from kernel config text.
pub fn parse(config: &str) -> Result<u32, HzError> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .ok_or(HzError::NoHz)
}

/// The running kernel's build configuration, from /proc/config.gz or
/// /boot/config-RELEASE.
pub fn running_config(release: &str) -> Option<String> {
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(f)
            .read_to_string(&mut text)
            .is_ok()
        {
            return Some(text);
        }
    }
    std::fs::read_to_string(format!("/boot/config-{release}")).ok()
}

/// `Some(true)` for `CONFIG_X=y|m`, `Some(false)` for "is not set" or absent
/// from a config that was read.
pub fn config_flag(config: &str, name: &str) -> bool {
    config.lines().any(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix('='))
            .is_some_and(|v| v == "y" || v == "m")
    })
}

pub fn running(release: &str) -> Result<u32, HzError> {
    match running_config(release) {
        Some(text) => parse(&text),
        None => Err(HzError::NoConfig {
            release: release.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_config_hz() {
        let cfg =
            "CONFIG_HZ_250=y\n# CONFIG_HZ_1000 is not set\nCONFIG_HZ=250\nCONFIG_SCHED_HRTICK=y\n";
        assert_eq!(super::parse(cfg).unwrap(), 250);
        assert!(super::parse("CONFIG_HZ_250=y\n").is_err());
        assert!(super::parse("CONFIG_HZ=0\n").is_err());
        assert!(super::config_flag(cfg, "CONFIG_HZ_250"));
        assert!(!super::config_flag(cfg, "CONFIG_HZ_1000"));
        assert!(!super::config_flag(cfg, "CONFIG_HZ_2"));
    }
}
