//! Long-running child processes (orderflow services) with captured output.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long `terminate` waits for a graceful exit before SIGKILL.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `terminate` checks whether the process has exited.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Inherited variables with this prefix are not passed to children (see
/// [`ChildProcess::spawn`]).
const PROJECT_ENV_PREFIX: &str = "ORDERFLOW_";

/// A service process started by a test, killed when dropped.
///
/// Tests drive the real `orderflow` binary as a black box, including crashes
/// (`kill`), graceful shutdown (`terminate`) and restarts, because that's
/// how it runs in production. Output goes to `<log_dir>/<name>.log` rather
/// than the test's stdout so parallel tests don't interleave, and so a failed
/// test can print exactly the log of the service that misbehaved.
///
/// The child runs in its own process group. `orderflow` supervises its
/// services as child processes, and killing only the supervisor would orphan
/// them; `kill`, `Drop` and the SIGKILL fallback of `terminate` therefore
/// signal the whole group. (Consequence: Ctrl-C in the terminal doesn't reach
/// the child directly; it is still killed when the test's `Drop`s run.)
pub struct ChildProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log_path: PathBuf,
    child: Child,
    /// Set once the child has been reaped. Until then its pid (and therefore
    /// its process group id) can't be reused, which is what makes signalling
    /// the group safe.
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts `program args…` with `envs` on top of the inherited environment,
    /// appending stdout and stderr to `<log_dir>/<name>.log` (created if
    /// needed; appending keeps the lines of earlier runs across restarts).
    ///
    /// `RUST_LOG` and everything else is inherited unless given in `envs`,
    /// except variables starting with `ORDERFLOW_`: those configure the
    /// services, and a developer's shell setting them must not leak into a
    /// hermetic test. Pass them explicitly in `envs` instead.
    ///
    /// Panics if the log file can't be opened or the program can't be started.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> ChildProcess {
        fs::create_dir_all(log_dir).unwrap_or_else(|error| {
            panic!("creating log dir {} failed: {error}", log_dir.display())
        });
        let log_path = log_dir.join(format!("{name}.log"));
        let child = spawn_child(name, program, args, envs, &log_path);
        ChildProcess {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
            envs: envs.to_vec(),
            log_path,
            child,
            status: None,
        }
    }

    /// The name given at spawn (also the log file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of the current run (changes on [`ChildProcess::restart`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file of this process, shared by all its runs.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process (all runs so far) wrote to stdout and stderr.
    pub fn log(&self) -> String {
        match fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => format!("<could not read {}: {error}>", self.log_path.display()),
        }
    }

    /// Whether the current run is still alive. Doesn't reap the process, so
    /// a later `kill`/`Drop` can still clean up its process group safely.
    pub fn is_running(&mut self) -> bool {
        !self.has_exited()
    }

    /// The exit status if the current run has exited by itself, else `None`.
    /// Useful for asserting that a service fails (e.g. on bad config).
    /// Any processes left in its group are killed.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.has_exited().then(|| self.kill_and_reap())
    }

    /// Kills the process (and its process group) with SIGKILL and waits for
    /// it, simulating a crash: no graceful shutdown, nothing flushed.
    pub fn kill(&mut self) {
        self.kill_and_reap();
    }

    /// Asks the process to shut down (SIGTERM to the process itself, so a
    /// supervisor can stop its services in order), waits up to 10 s, then
    /// SIGKILLs the group. Returns the exit status, which tests use to check
    /// that shutdown was clean (a status killed by SIGKILL means it hung).
    ///
    /// Blocks the calling thread while waiting.
    pub fn terminate(&mut self) -> ExitStatus {
        if self.status.is_none() && !self.has_exited() {
            let pid = self.leader_pid();
            self.request_stop();
            let deadline = Instant::now() + TERMINATE_TIMEOUT;
            while !self.has_exited() {
                if Instant::now() >= deadline {
                    eprintln!(
                        "testkit: {} (pid {pid}) did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM; sending SIGKILL",
                        self.name
                    );
                    break;
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        self.kill_and_reap()
    }

    /// Sends SIGTERM to the process itself and returns at once, to watch how it stops; reap it
    /// with [`ChildProcess::terminate`] (another SIGTERM changes nothing for a process that
    /// handles the first).
    pub fn request_stop(&mut self) {
        if self.status.is_some() || self.has_exited() {
            return;
        }
        let pid = self.leader_pid();
        // SAFETY: `kill` has no memory-safety preconditions. `pid` is our
        // unreaped child (`status` is None), so it can't have been reused
        // by an unrelated process.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        if rc != 0 {
            eprintln!(
                "testkit: SIGTERM to {} (pid {pid}) failed: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
    }

    /// Starts the process again with the same program, arguments and
    /// environment, appending to the same log. A still-running process is
    /// killed first, so two instances never run at once.
    pub fn restart(&mut self) {
        self.kill_and_reap();
        self.respawn();
    }

    /// Starts the (stopped) process again with its current program, arguments and environment.
    fn respawn(&mut self) {
        self.child = spawn_child(
            &self.name,
            &self.program,
            &self.args,
            &self.envs,
            &self.log_path,
        );
        self.status = None;
    }

    /// Stops the process gracefully ([`ChildProcess::terminate`]) and starts it again with `envs`
    /// set on top of its environment (a variable given again takes the new value): a rolling
    /// upgrade's restart with a new configuration. Blocks while the process stops.
    pub fn restart_with_env(&mut self, envs: &[(String, String)]) {
        self.terminate();
        for (key, value) in envs {
            self.envs.retain(|(existing, _)| existing != key);
            self.envs.push((key.clone(), value.clone()));
        }
        self.respawn();
    }

    fn leader_pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("child pid does not fit in pid_t")
    }

    /// Whether the current run has exited, *without* reaping it (a zombie
    /// keeps the pid and process group id reserved).
    fn has_exited(&self) -> bool {
        if self.status.is_some() {
            return true;
        }
        let pid = self.leader_pid();
        // SAFETY: an all-zero siginfo_t is a valid value (plain C struct);
        // zeroing is also required to detect "no state change" (si_pid == 0)
        // with WNOHANG.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of
        // the call. WNOWAIT leaves the child waitable, so std's `Child`
        // remains the one that reaps it.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc != 0 {
            // ECHILD: nothing to wait for, i.e. not running.
            return true;
        }
        // SAFETY: waitid succeeded, so `info` was filled in (or left zeroed
        // when no child changed state); si_pid is valid for SIGCHLD infos.
        unsafe { info.si_pid() != 0 }
    }

    /// SIGKILLs the process group (cleaning up any grandchildren) and reaps
    /// the leader. Idempotent: returns the recorded status once reaped.
    fn kill_and_reap(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let pid = self.leader_pid();
        // SAFETY: `kill` has no memory-safety preconditions. The leader is not
        // reaped yet, so its pid, and with it the process group id, can't have
        // been reused: only our child and its descendants are signalled.
        let rc = unsafe { libc::kill(-pid, libc::SIGKILL) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            // ESRCH would mean the group is already gone; nothing to report.
            if error.raw_os_error() != Some(libc::ESRCH) {
                eprintln!(
                    "testkit: SIGKILL to process group of {} (pid {pid}) failed: {error}",
                    self.name
                );
            }
        }
        let status = self.child.wait().unwrap_or_else(|error| {
            panic!("waiting for {} (pid {pid}) failed: {error}", self.name)
        });
        self.status = Some(status);
        status
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Spawns one run of the process in its own process group, logging to
/// `log_path` in append mode.
fn spawn_child(
    name: &str,
    program: &Path,
    args: &[String],
    envs: &[(String, String)],
    log_path: &Path,
) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap_or_else(|error| panic!("opening log {} failed: {error}", log_path.display()));
    let stderr = log.try_clone().unwrap_or_else(|error| {
        panic!(
            "duplicating log handle {} failed: {error}",
            log_path.display()
        )
    });

    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr))
        .process_group(0);
    for (key, _) in std::env::vars_os() {
        let is_project_var = key
            .to_str()
            .is_some_and(|key| key.starts_with(PROJECT_ENV_PREFIX));
        if is_project_var {
            command.env_remove(key);
        }
    }
    command.envs(envs.iter().map(|(key, value)| (key, value)));
    command.spawn().unwrap_or_else(|error| {
        panic!(
            "spawning {name} ({}) failed: {error}; is the binary built?",
            program.display()
        )
    })
}

/// The resident set size of process `pid` in KiB, as Linux reports it (`VmRSS`); `None` once it is
/// gone.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
