//! `dps-operator convert`: rewrites manifests written for a deprecated version of the API to the
//! storage version, as text, so that comments, key order and formatting stay as they are (also in
//! files that are not plain YAML, such as Helm templates).
//!
//! The versions share one schema, so converting a manifest is changing its `apiVersion`. Should
//! a later version change a field, its rewrite belongs here, tested on the examples.

use std::path::{Path, PathBuf};

use crate::api::{DEPRECATED_VERSIONS, GROUP, STORAGE_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}:{line}: apiVersion {api_version} is not a version of {GROUP} (served: {served})")]
    UnknownVersion { path: String, line: usize, api_version: String, served: String },
    #[error("could not {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{} is a directory: pass --write to rewrite the manifests in it in place", path.display())]
    DirectoryNeedsWrite { path: PathBuf },
}

/// A manifest text after conversion, and how many `apiVersion`s changed.
#[derive(Debug, PartialEq)]
pub struct Converted {
    pub text: String,
    pub changed: usize,
}

/// Converts the manifests in `text` (YAML or JSON, one or many documents, `List`s too) to the
/// storage version; `path` names the text in errors.
pub fn convert(text: &str, path: &str) -> Result<Converted, Error> {
    let mut changed = 0;
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let Some(api_version) = api_version_of(line).filter(|v| v.starts_with(&format!("{GROUP}/"))) else {
            out.push_str(line);
            continue;
        };
        let version = &api_version[GROUP.len() + 1..];
        if DEPRECATED_VERSIONS.contains(&version) {
            out.push_str(&line.replacen(api_version, &format!("{GROUP}/{STORAGE_VERSION}"), 1));
            changed += 1;
        } else if version == STORAGE_VERSION {
            out.push_str(line);
        } else {
            let served: Vec<&str> =
                std::iter::once(STORAGE_VERSION).chain(DEPRECATED_VERSIONS.iter().copied()).collect();
            return Err(Error::UnknownVersion {
                path: path.to_owned(),
                line: index + 1,
                api_version: api_version.to_owned(),
                served: served.join(", "),
            });
        }
    }
    Ok(Converted { text: out, changed })
}

/// The value of an `apiVersion` key on this line (YAML, or JSON with quoted keys), unquoted.
fn api_version_of(line: &str) -> Option<&str> {
    let rest = line.trim_start();
    let rest = rest.strip_prefix("- ").map_or(rest, str::trim_start);
    let rest = rest
        .strip_prefix("apiVersion")
        .or_else(|| rest.strip_prefix("\"apiVersion\""))
        .or_else(|| rest.strip_prefix("'apiVersion'"))?;
    let value = rest.trim_start().strip_prefix(':')?.trim();
    let value = value.split(" #").next().unwrap_or(value).trim_end().trim_end_matches(',');
    let value = value.trim_matches(|c| c == '"' || c == '\'');
    (!value.is_empty()).then_some(value)
}

/// The manifest files (`.yaml`, `.yml`, `.json`) under `path`, sorted, or `path` itself.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, Error> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let io = |source| Error::Io { action: "read the directory", path: path.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?.path();
        let manifest = entry.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        if entry.is_dir() {
            files.extend(manifest_files(&entry)?);
        } else if manifest {
            files.push(entry);
        }
    }
    files.sort();
    Ok(files)
}

/// Rewrites each manifest file under `paths` in place; returns each changed file with its count.
/// Every file is converted before any is written, so an error leaves them all as they were.
pub fn convert_in_place(paths: &[PathBuf]) -> Result<Vec<(PathBuf, usize)>, Error> {
    let mut rewrites = Vec::new();
    for file in paths.iter().map(|p| manifest_files(p)).collect::<Result<Vec<_>, _>>()?.into_iter().flatten()
    {
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
            action: "read",
            path: file.clone(),
            source,
        })?;
        let converted = convert(&text, &file.display().to_string())?;
        if converted.changed > 0 {
            rewrites.push((file, converted));
        }
    }
    rewrites
        .into_iter()
        .map(|(file, converted)| {
            std::fs::write(&file, converted.text).map_err(|source| Error::Io {
                action: "write",
                path: file.clone(),
                source,
            })?;
            Ok((file, converted.changed))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_deprecated_versions_and_keeps_everything_else() {
        let text = "# a group\napiVersion: dps.iot.dev/v1alpha1   # old\nkind: EnrollmentGroup\n\
                    metadata:\n  name: g # keep\n---\napiVersion: v1\nkind: Secret\n---\n\
                    apiVersion: \"dps.iot.dev/v1alpha1\"\nkind: IndividualEnrollment\n";
        let converted = convert(text, "m.yaml").unwrap();
        assert_eq!(converted.changed, 2);
        assert_eq!(
            converted.text,
            text.replace("dps.iot.dev/v1alpha1", "dps.iot.dev/v1beta1"),
            "only the apiVersion values change"
        );
    }

    #[test]
    fn lists_json_and_current_manifests() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: dps.iot.dev/v1alpha1\n  kind: EnrollmentGroup\n";
        assert_eq!(convert(list, "l").unwrap().changed, 1);
        let json = "{\n  \"apiVersion\": \"dps.iot.dev/v1alpha1\",\n  \"kind\": \"ProvisioningService\"\n}\n";
        let converted = convert(json, "j").unwrap();
        assert!(converted.text.contains("\"apiVersion\": \"dps.iot.dev/v1beta1\","), "{}", converted.text);
        let current = "apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\n";
        assert_eq!(convert(current, "c").unwrap(), Converted { text: current.into(), changed: 0 });
        // Not an apiVersion key, or another group: untouched.
        let other = "description: apiVersion: dps.iot.dev/v1alpha1\napiVersion: other.dev/v1alpha1\n";
        assert_eq!(convert(other, "o").unwrap().changed, 0);
    }

    #[test]
    fn an_unknown_version_of_the_group_is_named_with_its_line() {
        let error = convert("kind: X\napiVersion: dps.iot.dev/v2\n", "bad.yaml").unwrap_err().to_string();
        assert_eq!(
            error,
            "bad.yaml:2: apiVersion dps.iot.dev/v2 is not a version of dps.iot.dev (served: v1beta1, v1alpha1)"
        );
    }
}
