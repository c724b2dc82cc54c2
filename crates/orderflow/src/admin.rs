//! The admin token on the client side. The commands that call admin operations (`loadgen` and `demo`
//! creating products, `up` seeding the catalog, `gateway`) send it as `Authorization: Bearer`; it is
//! the one given (`--admin-token`, `ORDERFLOW_ADMIN_TOKEN`) or else the one `orderflow up` saved in
//! its data dir.

use anyhow::{Context, Result};
use platform::access::AdminToken;
use platform::nats::NatsAuth;
use std::path::{Path, PathBuf};

/// Where `orderflow up` keeps the token it generated, in its data dir (readable by its owner only).
pub const TOKEN_FILE: &str = "admin-token";

/// `--admin-token`, for the commands that call admin operations.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdminArgs {
    /// The system's admin token, sent as `Authorization: Bearer` on admin calls. Prefer the
    /// environment variable: a flag shows in `ps`.
    /// [default: the token `orderflow up` saved in $ORDERFLOW_DATA_DIR/admin-token, else
    /// ./.orderflow/admin-token]
    #[arg(
        long,
        global = true,
        env = "ORDERFLOW_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

impl AdminArgs {
    /// The token to send, if there is one. Without it the server answers 401, and its answer says
    /// what to set.
    pub fn token(&self) -> Option<String> {
        self.admin_token
            .clone()
            .or_else(|| read_token(&default_data_dir().join(TOKEN_FILE)))
    }
}

/// Where `orderflow up` keeps its data unless told otherwise: `$ORDERFLOW_DATA_DIR`, else
/// `./.orderflow`.
fn default_data_dir() -> PathBuf {
    std::env::var_os("ORDERFLOW_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".orderflow"))
}

/// Where `orderflow up` keeps the NATS passwords it generated, one file per user, in its data dir.
pub const NATS_AUTH_DIR: &str = "nats-auth";
/// The NATS user of the operator tools (status, trace, verify, dlq, loadgen): allowed everything.
pub const OPERATOR: &str = "operator";

/// The NATS credentials an operator tool connects with: the given ones (`--nats-user`,
/// `ORDERFLOW_NATS_USER`), else the `operator` user `orderflow up` saved in `data_dir` (default: as
/// for the admin token), else none.
pub fn operator_nats_auth(given: &NatsAuth, data_dir: Option<&Path>) -> NatsAuth {
    if given.nats_user.is_some() {
        return given.clone();
    }
    let dir = data_dir.map_or_else(default_data_dir, Path::to_path_buf);
    match read_token(&dir.join(NATS_AUTH_DIR).join(OPERATOR)) {
        Some(password) => NatsAuth {
            nats_user: Some(OPERATOR.to_owned()),
            nats_password: Some(password),
            ..given.clone()
        },
        None => given.clone(),
    }
}

/// The password of NATS user `user` that `up` keeps in `data_dir`, made (and saved, readable by its
/// owner only) on the first start.
pub fn nats_password_for_up(data_dir: &Path, user: &str) -> Result<String> {
    let dir = data_dir.join(NATS_AUTH_DIR);
    let path = dir.join(user);
    if let Some(saved) = read_token(&path) {
        return Ok(saved);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let password = AdminToken::generate().expose().to_owned();
    save_private(&path, &password)?;
    Ok(password)
}

fn read_token(path: &Path) -> Option<String> {
    let token = std::fs::read_to_string(path).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// The admin token of a system `up` runs, and where it came from.
#[derive(Debug, Clone)]
pub struct UpToken {
    pub token: AdminToken,
    /// The file it is saved in; `None` when it was given (`ORDERFLOW_ADMIN_TOKEN`).
    pub saved_in: Option<PathBuf>,
}

/// `up`'s token: the one given, else the one saved in `data_dir` by an earlier run (so scripts and
/// shells keep working across restarts), else a new one, saved there readable by its owner only.
pub fn token_for_up(given: Option<AdminToken>, data_dir: &Path) -> Result<UpToken> {
    if let Some(token) = given {
        return Ok(UpToken {
            token,
            saved_in: None,
        });
    }
    let path = data_dir.join(TOKEN_FILE);
    let token = match read_token(&path) {
        Some(saved) => AdminToken::parse(&saved).map_err(|reason| {
            anyhow::anyhow!(
                "{} does not hold a usable admin token ({reason}); delete it and `up` makes a new one",
                path.display()
            )
        })?,
        None => {
            let token = AdminToken::generate();
            save_private(&path, token.expose())?;
            token
        }
    };
    Ok(UpToken {
        token,
        saved_in: Some(path),
    })
}

fn save_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{contents}").with_context(|| format!("cannot write {}", path.display()))
}

/// What to do about an admin call the server refused for want of the right token; empty for any
/// other answer.
pub fn refusal_hint(status: reqwest::StatusCode) -> &'static str {
    match status {
        reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => {
            "\nset ORDERFLOW_ADMIN_TOKEN (or --admin-token) to the system's admin token: `orderflow \
             up` prints it and saves it as admin-token in its data dir"
        }
        _ => "",
    }
}

/// Adds the admin token to a request, when there is one.
pub trait WithAdmin {
    fn admin(self, token: Option<&str>) -> Self;
}

impl WithAdmin for reqwest::RequestBuilder {
    fn admin(self, token: Option<&str>) -> Self {
        match token {
            Some(token) => self.bearer_auth(token),
            None => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_keeps_its_token_across_runs_and_hides_it_from_others() {
        let dir = tempfile::tempdir().unwrap();
        let first = token_for_up(None, dir.path()).unwrap();
        let again = token_for_up(None, dir.path()).unwrap();
        assert_eq!(first.token.expose(), again.token.expose());
        assert_eq!(first.saved_in, Some(dir.path().join(TOKEN_FILE)));
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()))
            .unwrap();
        assert_eq!(mode & 0o777, 0o600);
        let given = AdminToken::parse("given-token-0123456789").unwrap();
        let given = token_for_up(Some(given), dir.path()).unwrap();
        assert_eq!(given.token.expose(), "given-token-0123456789");
        assert_eq!(given.saved_in, None);
        std::fs::write(dir.path().join(TOKEN_FILE), "weak\n").unwrap();
        let error = token_for_up(None, dir.path()).unwrap_err().to_string();
        assert!(error.contains("delete it"), "{error}");
    }
}
