//! The facts a figure depends on: where and what was measured.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub nats_server_version: String,
    /// UTC date of the run, `YYYY-MM-DD`.
    pub date: String,
    /// The commit measured, with `-dirty` when the work tree had changes.
    pub commit: String,
    /// Size of the orderflow binary measured.
    pub binary_bytes: u64,
    /// Size of the same binary without its debug information (what a container would ship).
    pub stripped_binary_bytes: Option<u64>,
    pub build_seconds: Option<f64>,
}

impl Machine {
    pub fn read(orderflow: &Path, build_seconds: Option<f64>) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(
                || "unknown CPU".to_owned(),
                |(_, model)| model.trim().to_owned(),
            );
        let memory_kb: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let nats = output(&crate::system::nats_server(), &["--version"]);
        let commit = output(Path::new("git"), &["rev-parse", "--short", "HEAD"]);
        // The suite's own output (the report, its results, the analysis it copies in) is not what
        // it measures: a run after a run is not dirty for it.
        let dirty = !output(
            Path::new("git"),
            &[
                "status",
                "--porcelain",
                "--",
                ".",
                ":!BENCHMARKS.md",
                ":!bench/results",
                ":!bench/analysis.md",
            ],
        )
        .is_empty();
        Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            memory_gib: memory_kb / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            nats_server_version: nats.trim_start_matches("nats-server: ").to_owned(),
            date: time::OffsetDateTime::now_utc().date().to_string(),
            commit: if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            },
            binary_bytes: std::fs::metadata(orderflow).map_or(0, |m| m.len()),
            stripped_binary_bytes: stripped_size(orderflow),
            build_seconds,
        }
    }
}

/// Trimmed standard output of a command, empty when it cannot run.
fn output(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Strips a copy of the binary with binutils' `strip`, when it is there.
fn stripped_size(binary: &Path) -> Option<u64> {
    let copy = tempfile::NamedTempFile::new().ok()?;
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(copy.path())
        .arg(binary)
        .status()
        .ok()?
        .success();
    stripped
        .then(|| std::fs::metadata(copy.path()).ok().map(|m| m.len()))
        .flatten()
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat` (clock ticks, all cores).
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    total: u64,
    /// Time the hypervisor gave to other guests while this one wanted to run.
    steal: u64,
}

impl CpuTimes {
    pub fn now() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        CpuTimes::parse(stat.lines().next()?)
    }

    fn parse(line: &str) -> Option<CpuTimes> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        // user nice system idle iowait irq softirq steal (guest time is already inside user).
        let ticks: Vec<u64> = fields
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        Some(CpuTimes {
            total: ticks.iter().sum(),
            steal: *ticks.get(7)?,
        })
    }

    /// The share of the CPU time since `earlier` that the hypervisor took: when it is large, every
    /// figure of the interval is low, and runs measured at different times compare badly.
    pub fn stolen_since(self, earlier: Option<CpuTimes>) -> Option<f64> {
        let earlier = earlier?;
        let total = self.total.checked_sub(earlier.total)?;
        (total > 0).then(|| self.steal.saturating_sub(earlier.steal) as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stolen_time_is_a_share_of_all_cpu_time_in_the_interval() {
        let before = CpuTimes::parse("cpu  100 0 50 800 10 0 5 35 0 0").expect("a cpu line");
        let after = CpuTimes::parse("cpu  200 0 70 900 10 0 5 135 0 0").expect("a cpu line");
        let share = after.stolen_since(Some(before)).expect("time passed");
        assert!((share - 100.0 / 320.0).abs() < 1e-9, "{share}");
        assert!(CpuTimes::parse("cpu0 1 2 3").is_none());
        assert!(after.stolen_since(None).is_none());
    }
}
