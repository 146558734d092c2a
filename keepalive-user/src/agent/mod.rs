pub mod capacity;
pub mod config;
pub mod http;
pub mod metrics;
pub mod serving;
pub mod state;
pub mod webconfig;
