//! End-to-end tests of the saga: real nats-server, real databases (SQLite and PostgreSQL), the real
//! `orderflow` binary running each service as its own process. One test binary, a module per concern.

mod harness;

mod access;
mod admission;
mod chaos;
mod cluster;
mod config;
mod correlation;
mod dashboards;
mod dead_letters;
mod deadline;
mod delivery;
mod evolution;
mod gateway_cli;
mod health;
mod hostile;
mod inspection;
mod lanes;
mod loadgen;
mod outages;
mod replicas;
mod requests;
mod retention;
mod retries;
mod saga;
mod schemas;
mod secrets;
mod shutdown;
mod supervision;
mod tls;
mod traces;
mod up;
mod verify;
