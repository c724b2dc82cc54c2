//! What a service knows about its own health beyond what a probe can see. `/health/ready` probes the
//! database (`SELECT 1`) and the NATS connection itself; the tasks report the rest here: a consumer
//! waiting out a database outage that `SELECT 1` cannot notice (a SQLite file locked by another
//! process still answers reads), a consumer that cannot declare itself on the broker, a task that died
//! and is being restarted. Any reported problem makes the service not ready, and the answer names it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Problems by check (`database`, or a task's name), then by who reported them; shared by the tasks of
/// one service and its `/health/ready` handler.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>,
}

impl Readiness {
    /// Makes `check` appear in the readiness answer ("ok" until a problem is reported), so that every
    /// task of the service is listed, not only the failing ones.
    pub fn register(&self, check: &str) {
        self.lock().entry(check.to_owned()).or_default();
    }

    /// What `reporter` currently knows about `check`: `Ok` clears its earlier problem. The check is
    /// down while any reporter has a problem with it, so one consumer recovering does not hide another
    /// that is still waiting.
    pub fn report(&self, check: &str, reporter: &str, state: Result<(), String>) {
        let mut checks = self.lock();
        let problems = checks.entry(check.to_owned()).or_default();
        match state {
            Ok(()) => {
                problems.remove(reporter);
            }
            Err(reason) => {
                problems.insert(reporter.to_owned(), reason);
            }
        }
    }

    /// Every check with its state: `Ok`, or the reason of one of the reporters that see it down.
    pub fn checks(&self) -> BTreeMap<String, Result<(), String>> {
        self.lock()
            .iter()
            .map(|(check, problems)| {
                let state = match problems.iter().next() {
                    None => Ok(()),
                    Some((reporter, reason)) if reporter == check => Err(reason.clone()),
                    Some((reporter, reason)) => Err(format!("{reporter}: {reason}")),
                };
                (check.clone(), state)
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BTreeMap<String, String>>> {
        // A panic while holding this lock leaves plain data behind, still fit to read.
        self.checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_down_while_any_reporter_sees_a_problem() {
        let readiness = Readiness::default();
        readiness.register("outbox-relay");
        readiness.report("database", "inventory-orders", Err("locked".into()));
        readiness.report("database", "payment-orders", Err("locked".into()));
        readiness.report("database", "inventory-orders", Ok(()));
        let checks = readiness.checks();
        assert_eq!(checks["outbox-relay"], Ok(()));
        assert_eq!(checks["database"], Err("payment-orders: locked".into()));
        readiness.report("database", "payment-orders", Ok(()));
        assert_eq!(readiness.checks()["database"], Ok(()));
    }

    #[test]
    fn a_task_reporting_on_itself_is_shown_without_its_name_twice() {
        let readiness = Readiness::default();
        readiness.report("charge-worker", "charge-worker", Err("restarting".into()));
        assert_eq!(
            readiness.checks()["charge-worker"],
            Err("restarting".into())
        );
    }
}
