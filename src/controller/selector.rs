//! The operator's `--watch-label-selector`, parsed as the API server parses label selectors, to
//! tell whether an object read outside the watch (the latest version, before a reconcile) is
//! still this operator's: an object relabelled to another shard is left to it.

use std::{collections::BTreeMap, str::FromStr};

/// A label selector: every requirement must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    DoesNotExist(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelSelector {
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let value = |key: &str| labels.and_then(|labels| labels.get(key));
        self.0.iter().all(|requirement| match requirement {
            Requirement::Exists(key) => value(key).is_some(),
            Requirement::DoesNotExist(key) => value(key).is_none(),
            Requirement::In(key, values) => value(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => value(key).is_none_or(|v| !values.contains(v)),
        })
    }
}

impl FromStr for LabelSelector {
    type Err = String;

    /// `key`, `!key`, `key=value` (or `==`), `key!=value`, `key in (a,b)`, `key notin (a,b)`,
    /// separated by commas.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_outside_parentheses(text) {
            let part = part.trim();
            requirements
                .push(requirement(part).ok_or_else(|| format!("{part:?} is not a label requirement"))?);
        }
        Ok(Self(requirements))
    }
}

fn requirement(part: &str) -> Option<Requirement> {
    let word = |text: &str| {
        let text = text.trim();
        let valid = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        valid.then(|| text.to_owned())
    };
    let value = |text: &str| {
        let text = text.trim();
        (text.is_empty() || word(text).is_some()).then(|| text.to_owned())
    };
    let set = |text: &str| -> Option<Vec<String>> {
        let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
        inner.split(',').map(value).collect()
    };
    if let Some(key) = part.strip_prefix('!') {
        return Some(Requirement::DoesNotExist(word(key)?));
    }
    if let Some((key, values)) = part.split_once(" notin ") {
        return Some(Requirement::NotIn(word(key)?, set(values)?));
    }
    if let Some((key, values)) = part.split_once(" in ") {
        return Some(Requirement::In(word(key)?, set(values)?));
    }
    if let Some((key, wanted)) = part.split_once("!=") {
        return Some(Requirement::NotIn(word(key)?, vec![value(wanted)?]));
    }
    if let Some((key, wanted)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Some(Requirement::In(word(key)?, vec![value(wanted)?]));
    }
    Some(Requirement::Exists(word(part)?))
}

/// `text` split at the commas that are not inside `( )`.
fn split_outside_parentheses(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (index, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn shard_selectors_match_as_the_api_server_matches_them() {
        let shard1: LabelSelector = "sharding.dps.iot.dev/key=shard1".parse().unwrap();
        let rest: LabelSelector = "!sharding.dps.iot.dev/key".parse().unwrap();
        let in_shard1 = labels(&[("sharding.dps.iot.dev/key", "shard1")]);
        let in_shard2 = labels(&[("sharding.dps.iot.dev/key", "shard2")]);
        assert!(shard1.matches(Some(&in_shard1)) && !rest.matches(Some(&in_shard1)));
        assert!(!shard1.matches(Some(&in_shard2)) && !rest.matches(Some(&in_shard2)));
        assert!(!shard1.matches(None) && rest.matches(None) && rest.matches(Some(&labels(&[("team", "a")]))));
    }

    #[test]
    fn every_form_of_requirement_parses_and_nonsense_is_named() {
        let selector: LabelSelector =
            "team in (a, b),tier notin (x),env!=prod,owner,app==web".parse().unwrap();
        let fitting = labels(&[("team", "b"), ("tier", "y"), ("env", "dev"), ("owner", "o"), ("app", "web")]);
        assert!(selector.matches(Some(&fitting)));
        let mut wrong_team = fitting.clone();
        wrong_team.insert("team".into(), "c".into());
        assert!(!selector.matches(Some(&wrong_team)));
        let error = "team in a".parse::<LabelSelector>().unwrap_err();
        assert!(error.contains("\"team in a\""), "{error}");
        assert!("a=b=c".parse::<LabelSelector>().is_err());
    }
}
