//! `orderflow probe`: a container's health check, for images without curl. It GETs one health URL
//! and exits 0 on a 2xx answer, 1 otherwise (saying why on stderr).

use platform::config::duration_between;
use std::net::SocketAddr;
use std::time::Duration;

/// GET a health endpoint and exit 0 if it answers 2xx, 1 otherwise.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The URL to GET. [default: http://127.0.0.1:<port of ORDERFLOW_LISTEN>/health/live]
    #[arg(value_parser = platform::config::HTTP_URL)]
    pub url: Option<String>,
    /// The address the process in this container listens on, for the default URL.
    #[arg(long, env = "ORDERFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// How long to wait for the answer (100ms to 1m).
    #[arg(long, default_value = "2s",
        value_parser = duration_between(Duration::from_millis(100), Duration::from_secs(60)))]
    pub timeout: Duration,
}

impl Args {
    fn url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}/health/live", self.listen.port()))
    }
}

/// Why a probe failed; `main.rs` prints it after `probe: ` on stderr and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    #[error("cannot create an HTTP client: {0}")]
    NoClient(reqwest::Error),
    #[error("{url} answered {status}")]
    Unhealthy {
        url: String,
        status: reqwest::StatusCode,
    },
    /// `cause` is the innermost error (what a person can act on), not the whole chain.
    #[error("{url} did not answer: {cause}")]
    NoAnswer { url: String, cause: String },
}

/// GETs the health URL: `Ok` on a 2xx answer.
pub async fn probe(args: &Args) -> Result<(), ProbeFailure> {
    let url = args.url();
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .build()
        .map_err(ProbeFailure::NoClient)?;
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(ProbeFailure::Unhealthy {
            url,
            status: response.status(),
        }),
        Err(error) => Err(ProbeFailure::NoAnswer {
            url,
            cause: crate::demo::root_cause(&error),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn the_default_url_is_the_listen_ports_liveness() {
        let cli = Cli::parse_from(["probe", "--listen", "0.0.0.0:8081"]);
        assert_eq!(cli.args.url(), "http://127.0.0.1:8081/health/live");
        let cli = Cli::parse_from(["probe", "http://10.0.0.1:9000/health/ready"]);
        assert_eq!(cli.args.url(), "http://10.0.0.1:9000/health/ready");
    }

    /// Answers one request on a local port with `status_line`, and returns the URL to probe.
    async fn one_answer(status_line: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let url = format!(
            "http://{}/health/live",
            listener.local_addr().expect("bound")
        );
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut connection, _) = listener.accept().await.expect("the probe connects");
            let mut request = [0; 1024];
            let _ = connection.read(&mut request).await;
            let answer = format!("HTTP/1.1 {status_line}\r\ncontent-length: 0\r\n\r\n");
            let _ = connection.write_all(answer.as_bytes()).await;
        });
        url
    }

    fn args(url: &str) -> Args {
        Cli::parse_from(["probe", url]).args
    }

    #[tokio::test]
    async fn a_2xx_answer_is_healthy() {
        let url = one_answer("204 No Content").await;
        probe(&args(&url)).await.expect("healthy");
    }

    #[tokio::test]
    async fn another_answer_is_unhealthy_and_says_which() {
        let url = one_answer("503 Service Unavailable").await;
        let failure = probe(&args(&url)).await.expect_err("unhealthy");
        assert_eq!(
            failure.to_string(),
            format!("{url} answered 503 Service Unavailable")
        );
    }

    #[tokio::test]
    async fn no_answer_names_the_innermost_cause() {
        // A port that was free a moment ago: nothing listens there now.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let url = format!(
            "http://{}/health/live",
            listener.local_addr().expect("bound")
        );
        drop(listener);
        let failure = probe(&args(&url)).await.expect_err("no answer");
        let text = failure.to_string();
        assert!(
            text.starts_with(&format!("{url} did not answer: "))
                && text.to_lowercase().contains("connection refused"),
            "{text}"
        );
    }
}
