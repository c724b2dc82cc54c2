//! Configuration values, parsed and checked before anything connects: durations with the range each
//! flag can honour, and URLs that name something orderflow can talk to. Every parser here is a clap
//! value parser, so a bad value ends the program with exit code 2 and a message that names the flag,
//! the value and what would be accepted, instead of a service that starts and then fails at its first
//! message. Also here: [`redact`], which every message that shows a URL goes through.

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use std::ffi::OsStr;
use std::str::FromStr;
use std::time::Duration;

/// Parses a duration: `30s`, `500ms`, `2m`, `1h`, `7d`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("'{raw}' is not a duration such as 30s, 500ms, 2m, 1h or 7d"))?;
    let seconds = |factor: u64| {
        amount
            .checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("'{raw}' is too long"))
    };
    match unit {
        "" | "s" => seconds(1),
        "ms" => Ok(Duration::from_millis(amount)),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => Err(format!(
            "'{raw}' has an unknown unit '{unit}'; use ms, s, m, h or d"
        )),
    }
}

/// A duration in the shortest exact unit, as flags take them: `250ms`, `30s`, `2m`, `7d`.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match s {
        s if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A value parser for a duration flag that can only work between `min` and `max` (inclusive):
/// `value_parser = duration_between(MIN, MAX)`.
pub fn duration_between(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |raw| {
        let duration = parse_duration(raw)?;
        if duration < min || duration > max {
            return Err(format!(
                "must be from {} to {}",
                format_duration(min),
                format_duration(max)
            ));
        }
        Ok(duration)
    }
}

/// The value parser of a URL flag. Unlike clap's own, its error never repeats the value as given,
/// which may hold a password: it says what is wrong with the value, masked.
#[derive(Clone, Copy)]
pub struct UrlParser(fn(&str) -> Result<String, String>);

/// `value_parser = NATS_URLS`: see [`check_nats_urls`].
pub const NATS_URLS: UrlParser = UrlParser(check_nats_urls);
/// `value_parser = DATABASE_URL`: see [`check_database_url`].
pub const DATABASE_URL: UrlParser = UrlParser(check_database_url);
/// `value_parser = HTTP_URL`: see [`check_http_url`].
pub const HTTP_URL: UrlParser = UrlParser(check_http_url);

impl TypedValueParser for UrlParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        let flag = arg.map_or_else(|| "a URL".to_owned(), ToString::to_string);
        let refused = |why: String| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for '{flag}': {why}\n"),
            )
            .with_cmd(cmd)
        };
        let raw = value
            .to_str()
            .ok_or_else(|| refused("it is not valid UTF-8".to_owned()))?;
        (self.0)(raw).map_err(refused)
    }
}

/// One NATS server URL or a comma-separated list of them (a cluster's seeds): `nats://`, `tls://`,
/// `ws://`, `wss://` or a bare `host:port`, each with a host.
pub fn check_nats_urls(raw: &str) -> Result<String, String> {
    for url in raw.split(',').map(str::trim) {
        let refused = |why: String| {
            format!(
                "'{}' is not a NATS server URL such as nats://127.0.0.1:4222 ({why})",
                redact(url)
            )
        };
        let addr = async_nats::ServerAddr::from_str(url).map_err(|e| refused(e.to_string()))?;
        if addr.into_inner().host_str().is_none_or(str::is_empty) {
            return Err(refused("it names no host".into()));
        }
    }
    Ok(raw.to_owned())
}

/// The servers of a `--nats-url` value checked by [`NATS_URLS`] (one URL, or a cluster's,
/// comma-separated), as a client connects to them: it tries them all and reconnects to whichever
/// answers.
pub fn nats_servers(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// A database URL orderflow can open: `sqlite://PATH[?mode=rwc]` or `postgres://USER@HOST:PORT/DB`.
pub fn check_database_url(raw: &str) -> Result<String, String> {
    let shown = redact(raw);
    let checked = if raw.starts_with("sqlite:") {
        crate::db::check_sqlite_url(raw)
    } else if raw.starts_with("postgres:") || raw.starts_with("postgresql:") {
        sqlx::postgres::PgConnectOptions::from_str(raw)
            .map(drop)
            .map_err(|error| error.to_string())
    } else {
        return Err(format!(
            "'{shown}' must start with sqlite:// or postgres://, e.g. sqlite://.orderflow/order.db?mode=rwc"
        ));
    };
    checked
        .map(|()| raw.to_owned())
        .map_err(|error| format!("'{shown}' is not a usable database URL: {error}"))
}

/// An `http://` or `https://` base URL with a host.
pub fn check_http_url(raw: &str) -> Result<String, String> {
    match url::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(raw.trim_end_matches('/').to_owned())
        }
        _ => Err(format!(
            "'{}' is not an http(s) URL such as http://127.0.0.1:8083",
            redact(raw)
        )),
    }
}

/// A URL fit to print or log: the password, if it has one, masked. Lists (`a,b`) are masked entry
/// by entry. Anything that is not a URL comes back unchanged.
pub fn redact(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _password)) => format!(
                "{}{user}:***{}",
                &url[..scheme_end],
                &url[scheme_end + at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_list_is_every_server_in_it() {
        let list = "nats://127.0.0.1:4222, nats://127.0.0.1:4223,nats://10.0.0.3:4222";
        assert_eq!(check_nats_urls(list), Ok(list.to_owned()));
        assert_eq!(
            nats_servers(list),
            [
                "nats://127.0.0.1:4222",
                "nats://127.0.0.1:4223",
                "nats://10.0.0.3:4222"
            ]
        );
        assert_eq!(nats_servers("nats://a:1"), ["nats://a:1"]);
    }

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration(&format!("{}d", u64::MAX)).is_err());
    }

    #[test]
    fn durations_print_in_their_shortest_exact_unit() {
        for text in ["250ms", "1500ms", "30s", "2m", "90s", "1h", "7d", "0ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn a_duration_outside_its_range_names_the_range() {
        let ack_wait = duration_between(Duration::from_millis(100), Duration::from_secs(3600));
        assert_eq!(ack_wait("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(ack_wait("0s"), Err("must be from 100ms to 1h".into()));
        assert!(ack_wait("2h").is_err());
        assert!(ack_wait("ten").is_err());
    }

    #[test]
    fn urls_are_checked_for_what_they_must_name() {
        assert!(check_nats_urls("nats://127.0.0.1:4222").is_ok());
        assert!(check_nats_urls("nats://a:4222,nats://b:4222").is_ok());
        assert!(check_nats_urls("localhost:4222").is_ok());
        assert!(check_nats_urls("http://x:4222").is_err());
        assert!(check_nats_urls("nats://").is_err());
        assert!(check_database_url("sqlite://.orderflow/order.db?mode=rwc").is_ok());
        assert!(check_database_url("sqlite://order.db?journal=off").is_err());
        assert!(check_database_url("postgres://postgres@127.0.0.1:5432/test").is_ok());
        assert!(check_database_url("mysql://root@db/x").is_err());
        assert!(check_database_url("postgres://u@h:notaport/db").is_err());
        assert_eq!(
            check_http_url("http://127.0.0.1:8083/"),
            Ok("http://127.0.0.1:8083".into())
        );
        assert!(check_http_url("ftp://x").is_err());
        assert!(check_http_url("127.0.0.1:8083").is_err());
    }

    #[test]
    fn printed_urls_hide_the_password() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/shop"),
            "postgres://app:***@db:5432/shop"
        );
        assert_eq!(
            redact("nats://u:p@a:4222,nats://b:4222"),
            "nats://u:***@a:4222,nats://b:4222"
        );
        assert_eq!(redact("postgres://app@db/shop"), "postgres://app@db/shop");
        assert_eq!(redact("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
        let refused = check_database_url("mysql://root:hunter2@db/x").unwrap_err();
        assert!(!refused.contains("hunter2"), "{refused}");
    }
}
