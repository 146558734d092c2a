//! The cloud a host runs in, from its DMI data (`/sys/class/dmi/id`), and
//! the idle timeout that cloud's NAT and load balancers apply by default:
//! an *assumed* rule, overridden by any declared one (docs/guide.md cites
//! where each number comes from).

use std::{path::Path, time::Duration};

use serde::Serialize;

use crate::policy::{Rule, RuleSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cloud {
    Aws,
    Azure,
    Gcp,
}

impl Cloud {
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Aws => "AWS",
            Cloud::Azure => "Azure",
            Cloud::Gcp => "Google Cloud",
        }
    }

    /// The default idle timeout of the cloud's NAT / load balancers, and
    /// what applies it.
    pub fn idle_timeout(self) -> (Duration, &'static str) {
        match self {
            // NAT gateway and Network Load Balancer: 350 s for TCP.
            Cloud::Aws => (Duration::from_secs(350), "AWS NAT gateway / NLB"),
            // Load Balancer and NAT gateway default: 4 minutes.
            Cloud::Azure => (
                Duration::from_secs(240),
                "Azure Load Balancer / NAT gateway",
            ),
            // External proxy and internal load balancers: 600 s (Cloud NAT's
            // established-connection timeout is 1200 s).
            Cloud::Gcp => (Duration::from_secs(600), "Google Cloud load balancers"),
        }
    }

    /// The assumed rule: every path, the cloud's default.
    pub fn rule(self) -> Rule {
        let (timeout, what) = self.idle_timeout();
        Rule {
            cidr: None,
            port: None,
            timeout,
            text: format!("{}s ({what}, assumed)", timeout.as_secs()),
            source: RuleSource::CloudAssumed,
        }
    }
}

/// Azure's constant chassis asset tag.
const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// Which cloud the DMI files under `dir` (normally /sys/class/dmi/id) name.
pub fn detect_in(dir: &Path) -> Option<Cloud> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let (vendor, product, bios, asset) = (
        read("sys_vendor"),
        read("product_name"),
        read("bios_vendor"),
        read("chassis_asset_tag"),
    );
    let board_tag = read("board_asset_tag");
    if vendor == "Amazon EC2"
        || bios == "Amazon EC2"
        || board_tag.starts_with("i-") && bios.contains("Amazon")
    {
        return Some(Cloud::Aws);
    }
    if vendor == "Microsoft Corporation"
        && (asset == AZURE_ASSET_TAG || product == "Virtual Machine")
    {
        return Some(Cloud::Azure);
    }
    if vendor == "Google" || product == "Google Compute Engine" {
        return Some(Cloud::Gcp);
    }
    None
}

/// This host's cloud.
pub fn detect() -> Option<Cloud> {
    detect_in(Path::new("/sys/class/dmi/id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(files: &[(&str, &str)]) -> std::path::PathBuf {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kato-dmi-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (f, v) in files {
            std::fs::write(dir.join(f), format!("{v}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn recognizes_each_cloud_from_dmi() {
        for (files, want) in [
            (
                vec![
                    ("sys_vendor", "Amazon EC2"),
                    ("product_name", "m6i.large"),
                    ("board_asset_tag", "i-0abc"),
                ],
                Some(Cloud::Aws),
            ),
            // Older Xen instances: only the BIOS says so.
            (
                vec![
                    ("sys_vendor", "Xen"),
                    ("bios_vendor", "Amazon EC2"),
                    ("product_name", "HVM domU"),
                ],
                Some(Cloud::Aws),
            ),
            (
                vec![
                    ("sys_vendor", "Microsoft Corporation"),
                    ("product_name", "Virtual Machine"),
                    ("chassis_asset_tag", AZURE_ASSET_TAG),
                ],
                Some(Cloud::Azure),
            ),
            (
                vec![
                    ("sys_vendor", "Google"),
                    ("product_name", "Google Compute Engine"),
                ],
                Some(Cloud::Gcp),
            ),
            (
                vec![
                    ("sys_vendor", "QEMU"),
                    ("product_name", "Standard PC (Q35 + ICH9, 2009)"),
                ],
                None,
            ),
            (vec![], None),
        ] {
            let dir = fixture(&files);
            assert_eq!(detect_in(&dir), want, "{files:?}");
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn assumed_rules_name_their_source() {
        let r = Cloud::Aws.rule();
        assert_eq!(r.timeout, Duration::from_secs(350));
        assert_eq!(r.source, RuleSource::CloudAssumed);
        assert_eq!(r.text, "350s (AWS NAT gateway / NLB, assumed)");
        assert_eq!(Cloud::Azure.rule().timeout, Duration::from_secs(240));
        assert_eq!(Cloud::Gcp.rule().timeout, Duration::from_secs(600));
    }
}
