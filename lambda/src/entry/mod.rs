//! The entry points, thin: the AWS clients built once (`app`), the HTTP router
//! (`http`), what Lambda invokes (`lambda`), `vending serve`'s connections (`serve`),
//! and the operator's commands `vending status` (`status`), `vending pools`
//! (`pools`) and `vending nodes` (`nodes`). `main.rs` parses the command line and
//! calls these.

pub mod app;
pub mod http;
pub mod lambda;
pub mod nodes;
pub mod pools;
pub mod serve;
pub mod status;
