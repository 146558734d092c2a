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

pub fn running(release: &str) -> Result<u32, HzError> {
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(f).read_to_string(&mut text).is_ok() {
            return parse(&text);
        }
    }
    match std::fs::read_to_string(format!("/boot/config-{release}")) {
        Ok(text) => parse(&text),
        Err(_) => Err(HzError::NoConfig { release: release.into() }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_config_hz() {
        let cfg = "CONFIG_HZ_250=y\n# CONFIG_HZ_1000 is not set\nCONFIG_HZ=250\nCONFIG_SCHED_HRTICK=y\n";
        assert_eq!(super::parse(cfg).unwrap(), 250);
        assert!(super::parse("CONFIG_HZ_250=y\n").is_err());
        assert!(super::parse("CONFIG_HZ=0\n").is_err());
    }
}
