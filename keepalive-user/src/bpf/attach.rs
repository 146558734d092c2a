//! Which way the programs reach the kernel: what the user asks for
//! (`--attach`) and what was taken, with why.

/// `--attach`: fentry, tracepoints, or the best the kernel allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// fentry/fexit where the kernel allows it, else tracepoints.
    #[default]
    Auto,
    /// fentry/fexit on the keepalive functions; fail if the kernel refuses.
    Fentry,
    /// BTF tracepoints (`timer:*` filtered on the keepalive timer).
    Tracepoint,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Fentry => "fentry",
            AttachMode::Tracepoint => "tracepoint",
        }
    }
}

impl std::str::FromStr for AttachMode {
    type Err = crate::invalid::Invalid;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| crate::invalid::Invalid::not_a(s, "one of auto, fentry, tracepoint"))
    }
}

/// The path taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AttachKind {
    /// fentry/fexit trampolines on the keepalive functions.
    #[serde(rename = "fentry")]
    Fentry,
    /// BTF tracepoints.
    #[serde(rename = "tp_btf")]
    TpBtf,
}

impl AttachKind {
    /// As `kato_build_info{attach}`, the trace banner and doctor print it.
    pub fn name(self) -> &'static str {
        match self {
            AttachKind::Fentry => "fentry",
            AttachKind::TpBtf => "tp_btf",
        }
    }
}

/// The attach path taken, and why (`kato doctor`, trace banner, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachPath {
    pub kind: AttachKind,
    /// What is attached where.
    pub detail: String,
    /// Why this path: forced, or what the kernel said to the other one.
    pub why: String,
}
