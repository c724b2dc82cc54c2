//! `orderflow probe`: a container's health check, for images without curl. It GETs one health URL
//! and exits 0 on a 2xx answer, 1 otherwise (saying why on stderr).

use platform::config::duration_between;
use std::net::SocketAddr;
use std::process::ExitCode;
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

pub async fn run(args: Args) -> ExitCode {
    let url = args.url();
    let answer = match reqwest::Client::builder().timeout(args.timeout).build() {
        Ok(client) => client.get(&url).send().await,
        Err(error) => {
            eprintln!("probe: cannot create an HTTP client: {error}");
            return ExitCode::FAILURE;
        }
    };
    match answer {
        Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("probe: {url} answered {}", response.status());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!(
                "probe: {url} did not answer: {}",
                crate::demo::root_cause(&error)
            );
            ExitCode::FAILURE
        }
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
}
