//! Kubernetes names for DPS ids, the same every run. An id that is a valid name keeps it; another
//! is lower-cased, `_` and `:` become `-`, and it gets a suffix from a hash of the id, so that ids
//! differing only there stay apart. Groups and individual enrollments share one set of names, so
//! the Secrets named after them never collide.

use std::collections::{BTreeMap, BTreeSet};

/// The names of the groups and of the individual enrollments, in the order given.
#[derive(Debug, PartialEq)]
pub struct Names {
    pub groups: Vec<String>,
    pub enrollments: Vec<String>,
}

/// The longest name: a resource name is a DNS subdomain (253), and the longest Secret named after
/// it adds `-webhook`.
const MAX: usize = 253 - "-webhook".len();

impl Names {
    pub fn assign<'a>(
        groups: impl Iterator<Item = &'a str>,
        enrollments: impl Iterator<Item = &'a str>,
    ) -> Self {
        let ids: Vec<(bool, &str)> =
            groups.map(|id| (true, id)).chain(enrollments.map(|id| (false, id))).collect();
        let mut names: Vec<String> = ids.iter().map(|(_, id)| name_for(id)).collect();
        // Still the same name (a hash collision, or a group and an enrollment with one id): the
        // ids in sorted order, groups first, get -2, -3, ...
        let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (index, name) in names.iter().enumerate() {
            by_name.entry(name.clone()).or_default().push(index);
        }
        let mut taken: BTreeSet<String> = by_name.keys().cloned().collect();
        for (name, mut indices) in by_name.into_iter().filter(|(_, indices)| indices.len() > 1) {
            indices.sort_by_key(|&index| (!ids[index].0, ids[index].1));
            for (n, &index) in indices.iter().enumerate().skip(1) {
                let candidate = (n + 1..).map(|k| format!("{name}-{k}")).find(|c| !taken.contains(c));
                let candidate = candidate.unwrap_or_default();
                taken.insert(candidate.clone());
                names[index] = candidate;
            }
        }
        let split = ids.iter().filter(|(group, _)| *group).count();
        let enrollments = names.split_off(split);
        Self { groups: names, enrollments }
    }
}

/// The name for one id, before collisions between ids are settled.
pub fn name_for(id: &str) -> String {
    if is_name(id) {
        return id.to_owned();
    }
    let cleaned: String = id
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let stem = if trimmed.is_empty() { "enrollment" } else { trimmed };
    let hash = short_hash(id);
    let stem = &stem[..stem.len().min(MAX - hash.len() - 1)];
    format!("{}-{hash}", stem.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
}

/// Whether `text` is a valid object name (a DNS subdomain) short enough for its Secrets.
fn is_name(text: &str) -> bool {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !text.is_empty()
        && text.len() <= MAX
        && text.chars().all(valid_char)
        && alphanumeric(text.chars().next())
        && alphanumeric(text.chars().last())
        && text.split('.').all(|part| alphanumeric(part.chars().next()) && alphanumeric(part.chars().last()))
}

/// Eight hex digits of the SHA-256 of `id`.
fn short_hash(id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_stay_and_others_are_cleaned_with_a_hash_of_the_id() {
        assert_eq!(name_for("thermostat-0001"), "thermostat-0001");
        assert_eq!(name_for("line.1.cameras"), "line.1.cameras");
        let derived = name_for("Thermostat_0001");
        assert!(derived.starts_with("thermostat-0001-") && derived.len() == "thermostat-0001-".len() + 8);
        assert_eq!(derived, name_for("Thermostat_0001"), "the same every run");
        assert_ne!(name_for("a_b"), name_for("a:b"), "ids differing where they are cleaned stay apart");
        assert!(is_name(&name_for("-.x-")), "{}", name_for("-.x-"));
        assert!(name_for("___").starts_with("enrollment-"));
        assert!(is_name(&name_for(&"A".repeat(128))));
    }

    #[test]
    fn a_group_and_an_enrollment_with_one_id_get_two_names_the_same_way_every_run() {
        for _ in 0..2 {
            let names = Names::assign(["boiler", "x"].into_iter(), ["boiler", "y"].into_iter());
            assert_eq!(names.groups, ["boiler", "x"]);
            assert_eq!(names.enrollments, ["boiler-2", "y"]);
        }
        // A -2 already taken is skipped.
        let names = Names::assign(["boiler"].into_iter(), ["boiler-2", "boiler"].into_iter());
        assert_eq!(names.enrollments, ["boiler-2", "boiler-3"]);
    }
}
