//! The `orderflow` command as a library: one module per command. The operator commands (`verify`,
//! `status`, `trace`, `logs`, `dlq`, `loadgen`, ...) gather their answer as data, a report or a list
//! of violations, so that tests check them without starting a process; `main.rs` parses the command
//! line and prints that data as text, a table or JSON. The long-running ones (`demo`, `loadgen`) hand
//! their progress to a callback from `main.rs` as they go; `up`, a supervisor, is the one that prints
//! itself: its console is its job.

pub mod admin;
pub mod broker_config;
pub mod demo;
pub mod dlq;
pub mod gateway;
pub mod loadgen;
pub mod logs;
pub mod probe;
pub mod schemas;
pub mod status;
pub mod trace;
pub mod up;
pub mod verify;
