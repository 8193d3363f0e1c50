//! The cost-optimising router (issue 10). So far: the catalogue it picks from
//! (`catalog.rs`), checked at start and shown by `GET /ai/models`. The router actor, the
//! providers, budgets and the ledger come next, in this folder.

pub mod catalog;
