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
use std::process::Command;

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

/// Exit code when the comparison could not be made (or the files not written).
pub const EXIT_UNABLE: u8 = 2;

/// What one `orderflow schemas` command did.
#[derive(Debug)]
pub enum Outcome {
    Generated(Generation),
    Checked(Comparison),
}

impl Outcome {
    /// Every line for stdout, in order.
    pub fn text_lines(&self) -> Vec<String> {
        match self {
            Outcome::Generated(generation) => generation.text_lines(),
            Outcome::Checked(comparison) => comparison.text_lines(),
        }
    }

    /// Why the command could not finish, after the lines of what it did until then.
    pub fn stopped_by(&self) -> Option<&anyhow::Error> {
        match self {
            Outcome::Generated(generation) => generation.stopped_by.as_ref(),
            Outcome::Checked(_) => None,
        }
    }

    /// True when every file was written, or the schemas are compatible.
    pub fn is_success(&self) -> bool {
        match self {
            Outcome::Generated(generation) => generation.stopped_by.is_none(),
            Outcome::Checked(comparison) => comparison.breaking.is_empty(),
        }
    }
}

/// Runs one `orderflow schemas` command. An error means nothing was done: the comparison could not be
/// made, or the files to generate could not even be listed.
pub fn execute(args: Args) -> Result<Outcome> {
    match args.action {
        Action::Generate { root } => Ok(Outcome::Generated(generate(&root))),
        Action::Check { dir, against } => check(&dir, &against).map(Outcome::Checked),
    }
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

/// What `generate` did: the files it wrote and deleted, in order, and what stopped it if it could not
/// finish (the files before that are written or deleted all the same).
#[derive(Debug)]
pub struct Generation {
    root: PathBuf,
    /// How many files this build generates.
    files: usize,
    written: Vec<PathBuf>,
    /// Schemas this build no longer generates.
    deleted: Vec<PathBuf>,
    stopped_by: Option<anyhow::Error>,
}

impl Generation {
    /// A line per file written, then per file deleted, then the counts (when it finished).
    pub fn text_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .written
            .iter()
            .map(|path| format!("wrote {}", path.display()))
            .collect();
        lines.extend(self.deleted.iter().map(|path| {
            format!(
                "deleted {} (this build no longer has that type or version)",
                path.display()
            )
        }));
        if self.stopped_by.is_none() {
            lines.push(format!(
                "{} generated files under {}: {} written, {} unchanged, {} deleted",
                self.files,
                self.root.display(),
                self.written.len(),
                self.files - self.written.len(),
                self.deleted.len()
            ));
        }
        lines
    }
}

fn generate(root: &Path) -> Generation {
    let files = generated_files();
    let mut generation = Generation {
        root: root.to_path_buf(),
        files: files.len(),
        written: Vec::new(),
        deleted: Vec::new(),
        stopped_by: None,
    };
    if let Err(error) = write_and_delete(root, &files, &mut generation) {
        generation.stopped_by = Some(error);
    }
    generation
}

/// Writes the files that differ and deletes the stale schemas, noting each in `generation`.
fn write_and_delete(
    root: &Path,
    files: &[(String, String)],
    generation: &mut Generation,
) -> Result<()> {
    for (path, text) in files {
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
        generation.written.push(target);
    }
    let generated: BTreeSet<PathBuf> = files.iter().map(|(path, _)| root.join(path)).collect();
    let events = root.join(contracts::documents::SCHEMAS_DIR).join("events");
    for stale in json_files(&events)?.difference(&generated) {
        std::fs::remove_file(stale)
            .with_context(|| format!("cannot delete {}", stale.display()))?;
        generation.deleted.push(stale.clone());
    }
    Ok(())
}

/// What `check` found: each breaking change (by schema), and the schemas that are new.
#[derive(Debug, PartialEq, Eq)]
pub struct Comparison {
    /// The earlier schemas, as --against named them.
    against: String,
    /// How many schemas were checked.
    checked: usize,
    /// "orders.created v1: <the change and the rule>", one per breaking change.
    breaking: Vec<String>,
    /// Schemas the earlier set does not have, by name.
    added: Vec<String>,
}

impl Comparison {
    /// Each breaking change, then a verdict (with what to do when there are breaking changes).
    pub fn text_lines(&self) -> Vec<String> {
        let against = &self.against;
        let new = if self.added.is_empty() {
            String::new()
        } else {
            format!(" (new: {})", self.added.join(", "))
        };
        let mut lines = self.breaking.clone();
        if self.breaking.is_empty() {
            lines.push(format!(
                "{} schemas checked against {against}: compatible{new}",
                self.checked
            ));
        } else {
            lines.push(format!(
                "{} breaking change(s) against {against}{new}. Within a version a schema may only widen: \
                 make the change a new version next to the old one (a new payload type in contracts::events, \
                 `orderflow schemas generate`), keep the old version, and follow docs/evolving-events.md.",
                self.breaking.len()
            ));
        }
        lines
    }
}

fn check(dir: &Path, against: &str) -> Result<Comparison> {
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
    Ok(compare(&earlier, &current, against))
}

/// The schemas by their path under the schemas directory (`events/orders.created/v1.json`) compared
/// with the earlier ones.
fn compare(
    earlier: &BTreeMap<String, Value>,
    current: &BTreeMap<String, Value>,
    against: &str,
) -> Comparison {
    let mut breaking = Vec::new();
    for (path, before) in earlier {
        let name = schema_name(path);
        let Some(now) = current.get(path) else {
            breaking.push(format!(
                "{name}: version removed: consumers may still receive it; keep its schema and its type"
            ));
            continue;
        };
        breaking.extend(
            breaking_changes(before, now)
                .into_iter()
                .map(|change| format!("{name}: {change}")),
        );
    }
    let added = current
        .keys()
        .filter(|path| !earlier.contains_key(*path))
        .map(|path| schema_name(path))
        .collect();
    Comparison {
        against: against.to_owned(),
        checked: current.len(),
        breaking,
        added,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schemas(entries: &[(&str, Value)]) -> BTreeMap<String, Value> {
        entries
            .iter()
            .map(|(path, schema)| ((*path).to_owned(), schema.clone()))
            .collect()
    }

    fn object(required: &[&str]) -> Value {
        json!({
            "type": "object",
            "required": required,
            "properties": {
                "order_id": {"type": "string"},
                "total_cents": {"type": "integer"},
            },
        })
    }

    #[test]
    fn a_compatible_set_says_so_and_names_the_new_schemas() {
        let earlier = schemas(&[("events/orders.created/v1.json", object(&["order_id"]))]);
        let current = schemas(&[
            ("events/orders.created/v1.json", object(&["order_id"])),
            ("events/orders.created/v2.json", object(&["order_id"])),
            ("events/envelope.json", json!({})),
        ]);
        let comparison = compare(&earlier, &current, "HEAD");
        assert!(comparison.breaking.is_empty());
        assert_eq!(
            comparison.text_lines(),
            ["3 schemas checked against HEAD: compatible (new: envelope, orders.created v2)"]
        );
    }

    #[test]
    fn each_breaking_change_is_a_line_before_the_verdict() {
        let earlier = schemas(&[
            (
                "events/orders.created/v1.json",
                object(&["order_id", "total_cents"]),
            ),
            ("events/orders.confirmed/v1.json", object(&["order_id"])),
        ]);
        let current = schemas(&[("events/orders.created/v1.json", object(&["order_id"]))]);
        let lines = compare(&earlier, &current, "old-schemas").text_lines();
        assert_eq!(
            lines[..2],
            [
                "orders.confirmed v1: version removed: consumers may still receive it; keep its schema \
                 and its type",
                "orders.created v1: /total_cents: required field removed: now optional",
            ],
            "{lines:#?}"
        );
        assert!(
            lines[2].starts_with(
                "2 breaking change(s) against old-schemas. Within a version a schema may only widen"
            ),
            "{}",
            lines[2]
        );
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn generate_writes_what_differs_and_deletes_what_this_build_no_longer_has() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let first = generate(root.path());
        assert!(first.stopped_by.is_none(), "{:?}", first.stopped_by);
        let lines = first.text_lines();
        assert_eq!(lines.len(), first.files + 1, "{lines:#?}");
        assert!(
            lines
                .iter()
                .take(first.files)
                .all(|l| l.starts_with("wrote "))
        );
        assert_eq!(
            lines[first.files],
            format!(
                "{} generated files under {}: {} written, 0 unchanged, 0 deleted",
                first.files,
                root.path().display(),
                first.files
            )
        );

        let stale = root.path().join("schemas/events/orders.created/v0.json");
        std::fs::write(&stale, "{}").expect("a stale schema");
        let again = generate(root.path());
        assert_eq!(
            again.text_lines(),
            [
                format!(
                    "deleted {} (this build no longer has that type or version)",
                    stale.display()
                ),
                format!(
                    "{} generated files under {}: 0 written, {} unchanged, 1 deleted",
                    again.files,
                    root.path().display(),
                    again.files
                ),
            ]
        );
        assert!(!stale.exists());
    }

    #[test]
    fn a_generation_that_stopped_shows_what_it_did_and_no_counts() {
        let generation = Generation {
            root: PathBuf::from("repo"),
            files: 3,
            written: vec![PathBuf::from("repo/schemas/events/envelope.json")],
            deleted: Vec::new(),
            stopped_by: Some(anyhow::anyhow!("cannot write repo/docs/events.md")),
        };
        let outcome = Outcome::Generated(generation);
        assert_eq!(
            outcome.text_lines(),
            ["wrote repo/schemas/events/envelope.json"]
        );
        assert!(!outcome.is_success());
        assert_eq!(
            outcome.stopped_by().map(ToString::to_string).as_deref(),
            Some("cannot write repo/docs/events.md")
        );
    }
}
