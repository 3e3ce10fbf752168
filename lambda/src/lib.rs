//! Activation vending: hands on-prem servers a working SSM hybrid activation at boot.

pub mod app;
pub mod aws;
pub mod config;
pub mod duration;
pub mod error;
pub mod http;
pub mod pool;
pub mod secret;
pub mod vend;
