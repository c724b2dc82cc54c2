//! A PostgreSQL server of a test's own, made with the machine's `initdb` and `pg_ctl` on a free port,
//! for what the shared server cannot do: accept only TLS, with a certificate from the test's own CA.
//! PostgreSQL refuses to run as root, so under root it runs as the `postgres` user.

use crate::free_port;
use crate::tls::TestCa;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

const REQUIRE_POSTGRES_ENV: &str = "ORDERFLOW_REQUIRE_POSTGRES";

pub struct PostgresServer {
    data: PathBuf,
    port: u16,
    ca: PathBuf,
    /// The user the server runs as, when it is not us (we are root).
    run_as: Option<String>,
    _dir: TempDir,
}

impl PostgresServer {
    /// Starts a server that takes TCP connections over TLS only (`hostssl`), with the server
    /// certificate of `ca`. `None`, with a message, where `initdb` is missing, unless
    /// `ORDERFLOW_REQUIRE_POSTGRES=1`.
    pub fn start_tls(ca: &TestCa) -> Option<PostgresServer> {
        if Command::new("initdb").arg("--version").output().is_err() {
            assert!(
                std::env::var(REQUIRE_POSTGRES_ENV).as_deref() != Ok("1"),
                "PostgreSQL is required ({REQUIRE_POSTGRES_ENV}=1) but initdb is not on the PATH"
            );
            eprintln!("skipping: initdb is not on the PATH, so no PostgreSQL server of our own");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("orderflow-pg-")
            .tempdir()
            .expect("create a temp dir for PostgreSQL");
        // SAFETY: geteuid has no preconditions.
        let run_as = (unsafe { libc::geteuid() } == 0).then(|| "postgres".to_owned());
        let data = dir.path().join("data");
        let server = PostgresServer {
            data: data.clone(),
            port: free_port(),
            ca: ca.ca_file(),
            run_as,
            _dir: dir,
        };
        let files = ca.server();
        let dir = server
            .data
            .parent()
            .expect("the data dir is in the temp dir")
            .to_owned();
        for (from, to) in [
            (&files.cert, dir.join("server.pem")),
            (&files.key, dir.join("server-key.pem")),
        ] {
            std::fs::copy(from, &to).expect("copy the server certificate");
        }
        server.hand_over(&dir);
        server.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let config = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            server.port,
            dir.display(),
            dir.join("server.pem").display(),
            dir.join("server-key.pem").display(),
        );
        append(&data.join("postgresql.conf"), &config);
        // Over TCP, TLS or nothing.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");
        server.hand_over(&dir);
        let log = dir.join("postgres.log").display().to_string();
        server.run(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Some(server)
    }

    /// The admin URL: TLS required, the server's certificate checked against the test's CA.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.port,
            self.ca.display()
        )
    }

    /// The same server without TLS, which it refuses.
    pub fn plain_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Runs `program` (as the server's user), panicking with its output if it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--", program]);
                command
            }
            None => Command::new(program),
        };
        let output = command
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Gives `dir` and what is in it to the server's user (a key must be its own, mode 0600).
    fn hand_over(&self, dir: &Path) {
        let Some(user) = &self.run_as else {
            return;
        };
        let name = CString::new(user.as_str()).expect("a user name");
        // SAFETY: getpwnam gets a valid C string; the result is read at once, before any other
        // call that could overwrite it.
        let owner = unsafe {
            let entry = libc::getpwnam(name.as_ptr());
            assert!(!entry.is_null(), "no user {user} to run PostgreSQL as");
            ((*entry).pw_uid, (*entry).pw_gid)
        };
        let mut paths = vec![dir.to_path_buf()];
        while let Some(path) = paths.pop() {
            std::os::unix::fs::chown(&path, Some(owner.0), Some(owner.1))
                .unwrap_or_else(|error| panic!("chown {}: {error}", path.display()));
            if path.is_dir() {
                paths.extend(
                    std::fs::read_dir(&path)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path()),
                );
            }
        }
        let key = dir.join("server-key.pem");
        if key.exists() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("make the key private");
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--", "pg_ctl"]);
                command
            }
            None => Command::new("pg_ctl"),
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|error| panic!("open {}: {error}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}
