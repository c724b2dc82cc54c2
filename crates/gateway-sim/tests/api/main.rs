//! The simulator's HTTP API, in process on port 0 with its own SQLite ledger per test: one test binary,
//! a module per feature.

mod faults;
mod helpers;
mod ledger;
