//! The names userspace finds the programs' maps and globals by. The eBPF
//! side names them by its statics' identifiers (`#[map]` takes no
//! constant); a unit test of the user crate checks every name here against
//! the compiled object, so a renamed static fails the build's tests, not a
//! load on someone's host.

/// Maps of the tracing object.
pub mod map {
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const WATCHED_NETNS: &str = "WATCHED_NETNS";
    pub const WATCHED_FEW: &str = "WATCHED_FEW";
    pub const OWNERS: &str = "OWNERS";
    pub const PORT_OWNERS: &str = "PORT_OWNERS";
    pub const PROTECT_CONF: &str = "PROTECT_CONF";
    pub const PROTECT_RULES: &str = "PROTECT_RULES";
    pub const PROTECT_CT: &str = "PROTECT_CT";
    pub const PROTECT_PLAN: &str = "PROTECT_PLAN";
    pub const PROTECTED: &str = "PROTECTED";
    pub const PROTECT_EVENTS: &str = "PROTECT_EVENTS";
    /// Kept by the programs alone (userspace never opens them).
    pub const PRIVATE: [&str; 4] = ["IN_FLIGHT", "SK_COPY", "CONN", "PROBING"];
    /// Every map userspace opens by name.
    pub const OPENED: [&str; 12] = [
        EVENTS,
        COUNTERS,
        WATCHED_NETNS,
        WATCHED_FEW,
        OWNERS,
        PORT_OWNERS,
        PROTECT_CONF,
        PROTECT_RULES,
        PROTECT_CT,
        PROTECT_PLAN,
        PROTECTED,
        PROTECT_EVENTS,
    ];
}

/// Read-only globals userspace writes before load.
pub mod global {
    pub const CONFIG: &str = "KATO_CONFIG";
    pub const ITER_CONFIG: &str = "KATO_ITER_CONFIG";
    /// aya-log's level switch.
    pub const LOG_LEVEL: &str = "AYA_LOG_LEVEL";
}
