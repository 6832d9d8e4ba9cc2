//! `kubectl dps import`: reads every enrollment group and individual enrollment of one DPS (the
//! query API, page by page, at the rate asked) and writes manifests that adopt them unchanged.
//! Everything is read before anything is written, and files are written under a temporary name
//! and then renamed: an import that fails leaves nothing that looks complete.

use std::{
    collections::BTreeMap,
    future::Future,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};

use super::{
    Error,
    cluster::ClusterArgs,
    connect::{self, Dps, SourceArgs},
    manifests::{self, Imported, Manifest, Options},
    progress::Progress,
};
use crate::{
    api::{DeletionPolicy, ServiceRef},
    dps::{self, Enrollment, RetryClass, models},
};

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Write all manifests to this file (`-`, the default, writes to stdout).
    #[arg(short = 'o', long, conflicts_with = "output_dir")]
    pub output: Option<PathBuf>,
    /// Write one file per resource and Secret into this folder (made; if it exists it must be
    /// empty).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// The connection the resources use (spec.serviceRef): NAME of a ProvisioningService, or
    /// clusterprovisioningservice/NAME. Defaults to --service.
    #[arg(long)]
    pub connection: Option<String>,
    /// A label for every manifest, KEY=VALUE; repeatable.
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// Import only ids matching this pattern (`*` any text, `?` one character; ids compare
    /// case-insensitively, as in DPS); repeatable.
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Also write Secrets holding the symmetric keys DPS holds (one attestation-mechanism call per
    /// symmetric-key enrollment; the files then hold secrets). Without it, the operator waits for
    /// you to create each key Secret and writes nothing meanwhile.
    #[arg(long)]
    pub with_keys: bool,
    /// The deletionPolicy of the resources (default: the connection's, else Delete).
    #[arg(long, value_parser = ["Delete", "Orphan"])]
    pub deletion_policy: Option<String>,
    /// Enrollments per query page.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub page_size: u32,
}

pub async fn run(cluster_args: &ClusterArgs, args: ImportArgs) -> Result<(), Error> {
    let cluster = match &args.source.service {
        Some(_) => Some(cluster_args.connect().await?),
        None => None,
    };
    let (dps, service) = connect::from_args(&args.source, cluster.as_ref()).await?;
    let options =
        options(&args, cluster_args, cluster.as_ref().map(|c| c.namespace.as_str()), service, &dps)?;
    eprintln!("Importing from {} at up to {} operations a minute", dps.name, dps.rate);
    let groups = list::<models::EnrollmentGroup>(&dps, args.page_size, "listing enrollment groups").await?;
    let enrollments =
        list::<models::IndividualEnrollment>(&dps, args.page_size, "listing individual enrollments").await?;
    let mut skipped = Vec::new();
    let groups =
        select(groups, &args.ids, &mut skipped, |g| &g.enrollment_group_id, manifests::group_skip_reason);
    let enrollments = select(
        enrollments,
        &args.ids,
        &mut skipped,
        |e| &e.registration_id,
        manifests::enrollment_skip_reason,
    );
    let (groups, enrollments) = match args.with_keys {
        true => (with_keys(&dps, groups).await?, with_keys(&dps, enrollments).await?),
        false => (without_keys(groups), without_keys(enrollments)),
    };
    let manifests = manifests::manifests(&groups, &enrollments, &options);
    let (written, to) = write(manifests, args.output.as_deref(), args.output_dir.as_deref())?;
    eprintln!("{}", summary(&written, groups.len(), enrollments.len(), &to));
    for (id, reason) in skipped {
        eprintln!("skipped {id}: {reason}");
    }
    Ok(())
}

fn options(
    args: &ImportArgs,
    cluster_args: &ClusterArgs,
    cluster_namespace: Option<&str>,
    service: Option<ServiceRef>,
    dps: &Dps,
) -> Result<Options, Error> {
    let connection = match (&args.connection, service) {
        (Some(text), _) => connect::service_ref(text)?,
        (None, Some(service)) => service,
        (None, None) => {
            return Err(Error::Input(
                "name the connection the resources use: --connection NAME (a ProvisioningService)".into(),
            ));
        }
    };
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let (key, value) = label
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .ok_or_else(|| Error::Input(format!("--label {label}: expected KEY=VALUE")))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(Options {
        namespace: cluster_args.namespace.clone().or(cluster_namespace.map(str::to_owned)),
        connection: connection.name,
        connection_kind: connection.kind,
        labels,
        deletion_policy: args.deletion_policy.as_deref().map(|policy| match policy {
            "Orphan" => DeletionPolicy::Orphan,
            _ => DeletionPolicy::Delete,
        }),
        host: dps.host.clone(),
    })
}

/// How often a failed call is tried before the import gives up.
const ATTEMPTS: u32 = 5;

/// Every record of kind `E`, page by page; a page that fails is tried again.
async fn list<E: Enrollment>(dps: &Dps, page_size: u32, label: &'static str) -> Result<Vec<E>, Error> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    let mut progress = Progress::new(label);
    loop {
        let page = || dps.client.query_page::<E>("SELECT *", Some(page_size), token.as_deref());
        let (page, next) = retried(&format!("{label} from {}", dps.name), page).await?;
        items.extend(page);
        progress.update(items.len(), None);
        match next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    progress.finish(items.len());
    Ok(items)
}

/// `call`, tried again after DPS asks to wait or a transient failure, up to [`ATTEMPTS`] times.
async fn retried<T, F: Future<Output = Result<T, dps::Error>>>(
    action: &str,
    mut call: impl FnMut() -> F,
) -> Result<T, Error> {
    let mut attempt = 1;
    loop {
        let error = match call().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let wait = match error.retry_class() {
            RetryClass::After(Some(wait)) => wait,
            RetryClass::After(None) | RetryClass::Backoff => Duration::from_secs(1 << attempt.min(5)),
            _ => return Err(Error::Dps { action: action.to_owned(), source: error }),
        };
        if attempt == ATTEMPTS {
            return Err(Error::Dps { action: format!("{action} ({ATTEMPTS} attempts)"), source: error });
        }
        eprintln!("{action} failed ({error}); trying again in {}s", wait.as_secs());
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// The records whose ids match `patterns` (all when none) and that can be imported; the others
/// go to `skipped` with the reason.
fn select<R>(
    records: Vec<R>,
    patterns: &[String],
    skipped: &mut Vec<(String, String)>,
    id: impl Fn(&R) -> &String,
    skip_reason: impl Fn(&R) -> Option<String>,
) -> Vec<R> {
    let wanted = |id: &str| patterns.is_empty() || patterns.iter().any(|p| matches(p, id));
    records
        .into_iter()
        .filter(|record| wanted(id(record)))
        .filter(|record| match skip_reason(record) {
            Some(reason) => {
                skipped.push((id(record).clone(), reason));
                false
            }
            None => true,
        })
        .collect()
}

/// Whether `id` matches `pattern`: `*` any text, `?` one character, case-insensitively.
pub fn matches(pattern: &str, id: &str) -> bool {
    let (pattern, id): (Vec<char>, Vec<char>) =
        (pattern.to_lowercase().chars().collect(), id.to_lowercase().chars().collect());
    // Classic wildcard matching with one backtrack point for the last `*`.
    let (mut p, mut i, mut star, mut mark) = (0, 0, None, 0);
    while i < id.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == id[i]) {
            (p, i) = (p + 1, i + 1);
        } else if p < pattern.len() && pattern[p] == '*' {
            (star, mark, p) = (Some(p), i, p + 1);
        } else if let Some(s) = star {
            (p, mark) = (s + 1, mark + 1);
            i = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

fn without_keys<R>(records: Vec<R>) -> Vec<Imported<R>> {
    records.into_iter().map(|record| Imported { record, keys: None }).collect()
}

/// The records with the keys of each symmetric-key one, read a few at a time within the rate.
async fn with_keys<R: Enrollment + manifests::Record>(
    dps: &Dps,
    records: Vec<R>,
) -> Result<Vec<Imported<R>>, Error> {
    let total = records.iter().filter(|r| r.symmetric_key()).count();
    let mut progress = Progress::new("reading symmetric keys");
    let mut done = 0;
    let reads = futures::stream::iter(records.into_iter().map(|record| async move {
        if !record.symmetric_key() {
            return Ok((Imported { record, keys: None }, false));
        }
        let action = format!("reading the keys of {} {} from {}", R::WHAT, record.id(), dps.name);
        let mechanism = retried(&action, || dps.client.attestation_mechanism::<R>(record.id())).await?;
        let keys = mechanism.symmetric_key.and_then(|k| Some((k.primary_key?, k.secondary_key?)));
        let keys = keys.map(|(p, s)| (p.expose().to_owned(), s.expose().to_owned()));
        let keys =
            keys.ok_or_else(|| Error::Connection(format!("{action}: DPS answered without both keys")))?;
        Ok((Imported { record, keys: Some(keys) }, true))
    }))
    .buffered(8)
    .inspect_ok(|(_, read)| {
        if *read {
            done += 1;
            progress.update(done, Some(total));
        }
    })
    .map_ok(|(imported, _)| imported)
    .try_collect::<Vec<_>>()
    .await?;
    if total > 0 {
        progress.finish(total);
    }
    Ok(reads)
}

/// What was written, for the summary.
#[derive(Debug, Default)]
struct Written {
    secrets: usize,
    /// Resources waiting for a Secret the user creates.
    to_fill: usize,
}

impl Written {
    fn count(&mut self, manifest: &Manifest) {
        self.secrets += usize::from(manifest.kind == "Secret");
        self.to_fill += usize::from(manifest.comment.is_some());
    }
}

/// Writes the manifests to a file, stdout, or a folder, as they are made; answers what and where.
fn write(
    manifests: impl Iterator<Item = Manifest>,
    output: Option<&Path>,
    folder: Option<&Path>,
) -> Result<(Written, String), Error> {
    let mut written = Written::default();
    let to = match (output, folder) {
        (_, Some(folder)) => {
            write_folder(manifests, folder, &mut written).map(|()| folder.display().to_string())?
        }
        (Some(path), None) if path != Path::new("-") => {
            write_file(manifests, path, &mut written).map(|()| path.display().to_string())?
        }
        _ => {
            let stdout = std::io::stdout().lock();
            let io = |source| Error::Io { action: "write", path: "stdout".into(), source };
            write_stream(manifests, stdout, &mut written).map_err(io)?;
            "stdout".into()
        }
    };
    Ok((written, to))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::Io { action, path, source }
}

fn write_stream(
    manifests: impl Iterator<Item = Manifest>,
    out: impl Write,
    written: &mut Written,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    for manifest in manifests {
        written.count(&manifest);
        out.write_all(b"---\n")?;
        out.write_all(manifests::document(&manifest).as_bytes())?;
    }
    out.flush()
}

/// One file, written under a temporary name and renamed when complete.
fn write_file(
    manifests: impl Iterator<Item = Manifest>,
    path: &Path,
    written: &mut Written,
) -> Result<(), Error> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.partial"));
    let file = std::fs::File::create(&partial).map_err(io_error("create", &partial))?;
    if let Err(error) = write_stream(manifests, file, written) {
        let _ = std::fs::remove_file(&partial);
        return Err(io_error("write", &partial)(error));
    }
    std::fs::rename(&partial, path).map_err(io_error("rename to", path))
}

/// One file per manifest, made in a temporary folder next to `folder` and renamed to it.
fn write_folder(
    manifests: impl Iterator<Item = Manifest>,
    folder: &Path,
    written: &mut Written,
) -> Result<(), Error> {
    if let Ok(mut entries) = std::fs::read_dir(folder) {
        if entries.next().is_some() {
            return Err(Error::Input(format!("{} exists and is not empty", folder.display())));
        }
        std::fs::remove_dir(folder).map_err(io_error("replace", folder))?;
    }
    let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = folder.with_file_name(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(io_error("create", &partial))?;
    for manifest in manifests {
        written.count(&manifest);
        let file = partial.join(format!("{}-{}.yaml", manifest.kind.to_ascii_lowercase(), manifest.name));
        std::fs::write(&file, manifests::document(&manifest)).map_err(io_error("write", &file))?;
    }
    std::fs::rename(&partial, folder).map_err(io_error("rename to", folder))
}

fn summary(written: &Written, groups: usize, enrollments: usize, to: &str) -> String {
    let mut text = format!(
        "Wrote {groups} enrollment groups, {enrollments} individual enrollments and {} Secrets to {to}.",
        written.secrets
    );
    if written.to_fill > 0 {
        text.push_str(&format!(
            " {} resources wait for Secrets you create (see the comment above each); until then the \
             operator writes nothing to them.",
            written.to_fill
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_patterns_match_as_globs_case_insensitively() {
        assert!(matches("thermo*", "Thermostat-0001"));
        assert!(matches("*-00?1", "thermostat-0001"));
        assert!(matches("*", ""));
        assert!(!matches("thermo*", "boiler"));
        assert!(!matches("a?c", "abbc"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
    }
}
