//! `orderflow schemas`: the event contracts as files. The Rust types are the source of truth; `generate`
//! writes their JSON Schemas under `schemas/events/`, the AsyncAPI document and the event catalog
//! (`contracts::documents`) to be checked in beside the code, where reviews and other teams read them
//! and a test holds them to the code; `check` is the compatibility gate between the schemas and an
//! earlier set (`contracts::compat` has the rules).

use anyhow::{Context as _, Result, bail};
use contracts::compat::breaking_changes;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Work with the event contracts (JSON Schemas, draft 2020-12).
///
/// Each event type and version has a schema at `schemas/events/<type>/<version>.json`, and the envelope
/// every event travels in one at `schemas/events/envelope.json`. They are generated from the Rust types;
/// consumers check every incoming event against them and dead-letter one that breaks them.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Write the schemas of this build's event types and versions, and the documents made from them.
    ///
    /// Writes `schemas/events/` (a JSON Schema per type and version, and the envelope's),
    /// `schemas/asyncapi.yaml` (AsyncAPI 3.0), `docs/events.md` (the event catalog) and
    /// `schemas/openapi/<service>.json` (the OpenAPI 3.1 document each service serves at
    /// /openapi.json) under --root, replacing what is there. A schema under `schemas/events/` that this build no longer generates
    /// is deleted, and said so: a version still in circulation must stay in the code. Run it after
    /// changing an event type, and commit the result with the change.
    Generate {
        /// The repository to write into.
        #[arg(long, value_name = "DIR", default_value = ".")]
        root: PathBuf,
    },
    /// Fail on any incompatible change of a schema within its version, naming the field and the rule.
    ///
    /// Compares the schemas in --dir with earlier ones: within a version a schema may only widen. A
    /// required field removed (or made optional), a required field added without a default, a type
    /// narrowed or changed (bounds, pattern and format included), an enum value removed,
    /// additionalProperties tightened, or a version removed is breaking: it must be a new version
    /// (`v2`) next to the old one. New types and versions are fine. Exit codes: 0 compatible, 1
    /// breaking changes, 2 the comparison could not be made.
    Check {
        /// The schemas to check (the repository's `schemas/`, as `generate` writes them).
        #[arg(long, value_name = "DIR", default_value = "schemas")]
        dir: PathBuf,
        /// The earlier schemas: a directory laid out like --dir, or a git revision whose committed
        /// copy of --dir counts (HEAD: what the last commit holds, so uncommitted changes are checked).
        #[arg(long, value_name = "DIR|GIT-REF", default_value = "HEAD")]
        against: String,
    },
}

pub fn run(args: Args) -> ExitCode {
    let outcome = match args.action {
        Action::Generate { root } => generate(&root).map(|()| ExitCode::SUCCESS),
        Action::Check { dir, against } => check(&dir, &against),
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::from(2)
    })
}

/// Where a service's OpenAPI document is checked in, relative to the repository.
fn openapi_path(service: &str) -> String {
    format!("schemas/openapi/{service}.json")
}

/// Every generated file, relative to the repository: the event contracts and their documents, and
/// the OpenAPI document each service serves at `/openapi.json`.
fn generated_files() -> Vec<(String, String)> {
    let mut files = contracts::documents::files();
    for (service, document) in [
        ("order-service", order_service::api::openapi()),
        ("inventory-service", inventory_service::api::openapi()),
        ("payment-service", payment_service::api::openapi()),
        ("gateway-sim", gateway_sim::api::openapi()),
    ] {
        let mut text = document.to_pretty_json().unwrap_or_default();
        text.push('\n');
        files.push((openapi_path(service), text));
    }
    files
}

fn generate(root: &Path) -> Result<()> {
    let files = generated_files();
    let mut changed = 0;
    for (path, text) in &files {
        let target = root.join(path);
        if std::fs::read_to_string(&target).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
        println!("wrote {}", target.display());
        changed += 1;
    }
    let generated: BTreeSet<PathBuf> = files.iter().map(|(path, _)| root.join(path)).collect();
    let events = root.join(contracts::documents::SCHEMAS_DIR).join("events");
    let mut deleted = 0;
    for stale in json_files(&events)?.difference(&generated) {
        std::fs::remove_file(stale)
            .with_context(|| format!("cannot delete {}", stale.display()))?;
        println!(
            "deleted {} (this build no longer has that type or version)",
            stale.display()
        );
        deleted += 1;
    }
    println!(
        "{} generated files under {}: {changed} written, {} unchanged, {deleted} deleted",
        files.len(),
        root.display(),
        files.len() - changed
    );
    Ok(())
}

fn check(dir: &Path, against: &str) -> Result<ExitCode> {
    if !dir.join("events").is_dir() {
        bail!(
            "{} has no events/ directory: run this in the repository, or name the schemas with --dir",
            dir.display()
        );
    }
    let current = read_dir_schemas(dir)?;
    let earlier = if Path::new(against).is_dir() {
        read_dir_schemas(Path::new(against))?
    } else {
        read_git_schemas(dir, against)?
    };
    let mut breaking = 0;
    for (path, before) in &earlier {
        let name = schema_name(path);
        let Some(now) = current.get(path) else {
            println!(
                "{name}: version removed: consumers may still receive it; keep its schema and its type"
            );
            breaking += 1;
            continue;
        };
        for change in breaking_changes(before, now) {
            println!("{name}: {change}");
            breaking += 1;
        }
    }
    let added: Vec<String> = current
        .keys()
        .filter(|path| !earlier.contains_key(*path))
        .map(|path| schema_name(path))
        .collect();
    let new = if added.is_empty() {
        String::new()
    } else {
        format!(" (new: {})", added.join(", "))
    };
    if breaking == 0 {
        println!(
            "{} schemas checked against {against}: compatible{new}",
            current.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{breaking} breaking change(s) against {against}{new}. Within a version a schema may only widen: \
         make the change a new version next to the old one (a new payload type in contracts::events, \
         `orderflow schemas generate`), keep the old version, and follow docs/evolving-events.md."
    );
    Ok(ExitCode::FAILURE)
}

/// `events/orders.created/v1.json` as `orders.created v1`; the envelope as `envelope`.
fn schema_name(path: &str) -> String {
    let stem = path.trim_start_matches("events/").trim_end_matches(".json");
    match stem.split_once('/') {
        Some((event_type, version)) => format!("{event_type} {version}"),
        None => stem.to_owned(),
    }
}

/// The schemas under `dir/events`, by their path relative to `dir`.
fn read_dir_schemas(dir: &Path) -> Result<BTreeMap<String, Value>> {
    let mut schemas = BTreeMap::new();
    for path in json_files(&dir.join("events"))? {
        let relative = path
            .strip_prefix(dir)
            .context("a schema outside its directory")?
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        schemas.insert(relative, parse_schema(&text, &path.display().to_string())?);
    }
    Ok(schemas)
}

/// The schemas under `dir/events` as revision `revision` holds them; none if it has no such directory.
fn read_git_schemas(dir: &Path, revision: &str) -> Result<BTreeMap<String, Value>> {
    if git(
        dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{revision}^{{commit}}"),
        ],
    )
    .is_err()
    {
        bail!(
            "--against {revision}: neither a directory nor a revision of the git repository holding {}",
            dir.display()
        );
    }
    let mut schemas = BTreeMap::new();
    let listed = git(
        dir,
        &["ls-tree", "-r", "--name-only", revision, "--", "events"],
    )?;
    for path in listed.lines().filter(|path| path.ends_with(".json")) {
        let text = git(dir, &["show", &format!("{revision}:./{path}")])?;
        schemas.insert(
            path.to_owned(),
            parse_schema(&text, &format!("{revision}:{path}"))?,
        );
    }
    Ok(schemas)
}

fn parse_schema(text: &str, origin: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{origin} is not JSON"))
}

/// The standard output of `git` run in `dir`; an error with its standard error if it fails.
fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .context("cannot run git (is it installed?)")?;
    if !output.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("git printed something that is not UTF-8")
}

/// Every `.json` file under `dir`, however deep; none when `dir` does not exist.
fn json_files(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut found = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let entries = match std::fs::read_dir(&next) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", next.display()));
            }
        };
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot read {}", next.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|extension| extension == "json")
            {
                found.insert(path);
            }
        }
    }
    Ok(found)
}
