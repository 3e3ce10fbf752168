//! Activation vending: hands on-prem servers a working SSM hybrid activation at boot.

pub mod app;
pub mod aws;
pub mod blocks;
pub mod clock;
pub mod codes;
pub mod config;
pub mod directory;
pub mod duration;
pub mod error;
pub mod http;
pub mod lambda_entry;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod pools;
pub mod pools_report;
pub mod rotation;
pub mod secret;
pub mod stale;
pub mod standby;
pub mod status;
pub mod sweep;
pub mod vend;
pub mod verify;
