//! The entry points, thin: the AWS clients built once (`app`), the HTTP router
//! (`http`), what Lambda invokes (`lambda`), `vending serve`'s connections (`serve`),
//! and the operator's commands `vending status` (`status`) and `vending pools`
//! (`pools`). `main.rs` parses the command line and calls these.

pub mod app;
pub mod http;
pub mod lambda;
pub mod pools;
pub mod serve;
pub mod status;
