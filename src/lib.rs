//! The `revo` binary's library: configuration, CLI, storage adapters, the HTTP edge and wiring.
//!
//! Domain logic lives in the library crates: `revo-events` (events, projections, the store
//! contract), `revo-nats` (subjects and the bus) and `revo-actors` (relay, projection runner).
//! This crate connects them to Postgres, SQLite, NATS and HTTP.

pub mod audit;
pub mod budgets;
pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod healthcheck;
pub mod http;
pub mod identity;
pub mod inference;
pub mod ledger;
pub mod metrics;
pub mod node;
pub mod optimize;
pub mod projections;
pub mod registry;
pub mod replay;
pub mod serve;
pub mod users;
