//! End-to-end checks that the testkit really starts, restarts and cleans up
//! its dependencies.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use sqlx::Connection;
use testkit::{Backend, ChildProcess, NatsServer, TestDatabase, wait_until};

type TestResult = Result<(), Box<dyn Error + Send + Sync>>;

/// Whether `pid` names a live (non-zombie) process.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

#[tokio::test]
async fn jetstream_data_survives_kill_and_restart() -> TestResult {
    let mut server = NatsServer::start().await;
    assert_ne!(server.port(), 4222, "must never use the system NATS port");
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    let port = server.port();

    let js = jetstream::new(async_nats::connect(server.url()).await?);
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: "SMOKE".to_owned(),
            subjects: vec!["smoke.>".to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    js.publish("smoke.one", "hello".into()).await?.await?;
    assert_eq!(stream.info().await?.state.messages, 1);
    drop(stream);
    drop(js);

    server.kill();
    assert!(!server.is_running());
    server.restart().await;
    assert_eq!(server.port(), port, "restart must keep the port");
    assert!(server.store_dir().join("jetstream").is_dir());

    // A fresh connection: don't depend on the old client's reconnect logic.
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    let mut stream = js.get_stream("SMOKE").await?;
    assert_eq!(stream.info().await?.state.messages, 1);
    let message = stream.get_raw_message(1).await?;
    assert_eq!(message.subject.as_str(), "smoke.one");
    assert_eq!(&message.payload[..], b"hello");
    Ok(())
}

#[tokio::test]
async fn stop_is_graceful_and_drop_leaves_no_process() -> TestResult {
    let mut server = NatsServer::start().await;
    server.client().await.flush().await?;

    server.stop();
    assert!(!server.is_running());
    assert!(
        server.log().contains("Server Exiting"),
        "log:\n{}",
        server.log()
    );

    server.restart().await;
    server.client().await.flush().await?;
    let pid = server.pid().expect("server is running");
    assert!(process_alive(pid));
    drop(server);
    assert!(!process_alive(pid), "nats-server {pid} survived Drop");
    Ok(())
}

#[tokio::test]
async fn servers_are_isolated_from_each_other() {
    let (a, b) = tokio::join!(NatsServer::start(), NatsServer::start());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
}

async fn database_accepts_a_table(backend: Backend) -> TestResult {
    sqlx::any::install_default_drivers();
    let Some(db) = TestDatabase::create(backend).await else {
        return Ok(()); // Skipped; `create` said why.
    };
    assert_eq!(db.backend(), backend);
    let url = db.url_for("orders");
    let pool = sqlx::AnyPool::connect(&url).await?;
    sqlx::query("CREATE TABLE smoke (id BIGINT PRIMARY KEY, note TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO smoke (id, note) VALUES (1, 'hello')")
        .execute(&pool)
        .await?;
    let note: String = sqlx::query_scalar("SELECT note FROM smoke WHERE id = 1")
        .fetch_one(&pool)
        .await?;
    assert_eq!(note, "hello");
    pool.close().await;

    match backend {
        Backend::Sqlite => {
            assert!(url.starts_with("sqlite://") && url.ends_with("/orders.db?mode=rwc"));
            assert_ne!(db.url_for("payments"), url, "one SQLite file per service");
        }
        Backend::Postgres => {
            assert_eq!(db.url_for("payments"), url, "one database for all services");
            drop(db);
            let reconnect = sqlx::PgConnection::connect(&url).await;
            assert!(reconnect.is_err(), "test database still exists after Drop");
        }
    }
    Ok(())
}

#[tokio::test]
async fn sqlite_database_accepts_a_table() -> TestResult {
    database_accepts_a_table(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_database_accepts_a_table() -> TestResult {
    database_accepts_a_table(Backend::Postgres).await
}

fn sh() -> PathBuf {
    PathBuf::from("/bin/sh")
}

fn script(body: &str) -> Vec<String> {
    vec!["-c".to_owned(), body.to_owned()]
}

#[tokio::test]
async fn child_process_logs_terminates_and_restarts() {
    let logs = tempfile::tempdir().expect("temp dir");
    let mut child = ChildProcess::spawn(
        "svc",
        &sh(),
        &script(
            r#"echo "started $GREETING"; echo oops >&2
               trap 'echo stopping; exit 0' TERM
               while true; do sleep 0.02; done"#,
        ),
        &[("GREETING".to_owned(), "hi".to_owned())],
        logs.path(),
    );
    assert_eq!(child.log_path(), logs.path().join("svc.log"));
    wait_until("svc to log", Duration::from_secs(5), || async {
        child.log().contains("started hi\noops").then_some(())
    })
    .await;
    assert!(child.is_running());

    let status = child.terminate();
    assert!(status.success(), "graceful exit expected, got {status}");
    assert!(!child.is_running());
    assert!(child.log().contains("stopping"));

    let first_pid = child.pid();
    child.restart();
    assert_ne!(child.pid(), first_pid);
    wait_until("svc to log again", Duration::from_secs(5), || async {
        (child.log().matches("started hi").count() == 2).then_some(())
    })
    .await;
    child.kill();
    assert!(!child.is_running());
    assert!(!process_alive(child.pid()));
}

#[tokio::test]
async fn child_process_kill_reaches_grandchildren() {
    let logs = tempfile::tempdir().expect("temp dir");
    let pid_file = logs.path().join("grandchild.pid");
    let mut child = ChildProcess::spawn(
        "supervisor",
        &sh(),
        &script(&format!(
            "sleep 300 & echo $! > {}; wait",
            pid_file.display()
        )),
        &[],
        logs.path(),
    );
    let grandchild = wait_until("grandchild pid", Duration::from_secs(5), || {
        let pid_file: &Path = &pid_file;
        async move {
            std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|pid| pid.trim().parse::<u32>().ok())
        }
    })
    .await;
    assert!(process_alive(grandchild));
    child.kill();
    wait_until("grandchild to die", Duration::from_secs(5), || async {
        (!process_alive(grandchild)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn child_process_reports_its_own_exit() {
    let logs = tempfile::tempdir().expect("temp dir");
    let mut child = ChildProcess::spawn("failing", &sh(), &script("exit 3"), &[], logs.path());
    let status = wait_until("failing to exit", Duration::from_secs(5), || {
        let status = child.exit_status();
        async move { status }
    })
    .await;
    assert_eq!(status.code(), Some(3));
}
