//! The pool, one concept in three parts: `state` (what the table says, and every
//! decision about it, pure), `settings` (a pool's config, parsed and validated) and
//! `directory` (the configs a process vends with, shared between processes).

pub mod directory;
pub mod settings;
pub mod state;
