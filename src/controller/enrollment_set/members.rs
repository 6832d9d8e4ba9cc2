//! A set's members: read from its spec and its member lists (CSV or JSON lines), checked line by
//! line, so that a list that does not parse names the line and nothing is written meanwhile.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use crate::api::{AttestationKind, MemberListFormat, ProvisioningStatus, SetMember};

/// One member, as compact as its fields allow: a set holds tens of thousands.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub registration_id: Box<str>,
    pub device_id: Option<Box<str>>,
    pub endorsement_key: Option<Box<str>>,
    pub certificate: Option<Box<str>>,
    pub provisioning_status: Option<ProvisioningStatus>,
    /// Its line in its list (its index in `spec.members`), for messages.
    pub line: u32,
}

/// How messages name the inline members.
pub const INLINE: &str = "spec.members";

/// A member list that cannot be used, and why, naming the list and line.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ListError {
    #[error("{list} line {line}: {problem}")]
    Line { list: String, line: usize, problem: String },
    #[error("{list}: {problem}")]
    Whole { list: String, problem: String },
    #[error("registration id {id} is listed twice (DPS ids are case-insensitive): {first} and {second}")]
    Duplicate { id: String, first: String, second: String },
}

/// The format of the list under `key` when the spec does not say.
pub fn format_of(key: &str, format: Option<MemberListFormat>) -> MemberListFormat {
    format.unwrap_or_else(|| {
        let json = [".jsonl", ".ndjson", ".json"].iter().any(|suffix| key.ends_with(suffix));
        if json { MemberListFormat::JsonLines } else { MemberListFormat::Csv }
    })
}

/// The members of one list, `name` naming it in messages.
pub fn parse(
    name: &str,
    text: &str,
    format: MemberListFormat,
    kind: AttestationKind,
) -> Result<Vec<Member>, ListError> {
    let at = |line: usize| move |problem: String| ListError::Line { list: name.to_owned(), line, problem };
    let mut lines = text.lines().enumerate().map(|(index, line)| (index + 1, line.trim()));
    let mut lines = lines.by_ref().filter(|(_, line)| !line.is_empty() && !line.starts_with('#')).peekable();
    let mut members = Vec::new();
    match format {
        MemberListFormat::JsonLines => {
            for (number, line) in lines {
                let member: SetMember = serde_json::from_str(line)
                    .map_err(|e| at(number)(format!("is not a member as JSON: {}", json_problem(&e))))?;
                members.push(checked(member, kind, number).map_err(at(number))?);
            }
        }
        MemberListFormat::Csv => {
            let columns = match lines.peek() {
                Some((number, header))
                    if header.split(',').next().map(str::trim) == Some("registrationId") =>
                {
                    let columns = header_columns(header).map_err(at(*number))?;
                    lines.next();
                    columns
                }
                _ => vec![Column::RegistrationId],
            };
            for (number, line) in lines {
                let member = csv_member(line, &columns).map_err(at(number))?;
                members.push(checked(member, kind, number).map_err(at(number))?);
            }
        }
    }
    Ok(members)
}

fn json_problem(error: &serde_json::Error) -> String {
    // serde's message names the column; the line is ours to say.
    let text = error.to_string();
    text.split(" at line ").next().unwrap_or(&text).to_owned()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Column {
    RegistrationId,
    DeviceId,
    EndorsementKey,
    Certificate,
    ProvisioningStatus,
}

fn header_columns(header: &str) -> Result<Vec<Column>, String> {
    header
        .split(',')
        .map(|name| match name.trim() {
            "registrationId" => Ok(Column::RegistrationId),
            "deviceId" => Ok(Column::DeviceId),
            "endorsementKey" => Ok(Column::EndorsementKey),
            "certificate" => Ok(Column::Certificate),
            "provisioningStatus" => Ok(Column::ProvisioningStatus),
            other => Err(format!(
                "the header names the column {other:?}; the columns are registrationId, deviceId, endorsementKey, \
                 certificate and provisioningStatus"
            )),
        })
        .collect()
}

fn csv_member(line: &str, columns: &[Column]) -> Result<SetMember, String> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    if fields.len() > columns.len() {
        return Err(format!("has {} fields; the header names {} columns", fields.len(), columns.len()));
    }
    let mut member = SetMember {
        registration_id: String::new(),
        device_id: None,
        endorsement_key: None,
        certificate: None,
        provisioning_status: None,
    };
    for (column, field) in columns.iter().zip(fields).filter(|(_, field)| !field.is_empty()) {
        let value = Some(field.to_owned());
        match column {
            Column::RegistrationId => member.registration_id = field.to_owned(),
            Column::DeviceId => member.device_id = value,
            Column::EndorsementKey => member.endorsement_key = value,
            Column::Certificate => member.certificate = value,
            Column::ProvisioningStatus => {
                member.provisioning_status = Some(match field {
                    "enabled" => ProvisioningStatus::Enabled,
                    "disabled" => ProvisioningStatus::Disabled,
                    other => {
                        return Err(format!("provisioningStatus is {other:?}; it is enabled or disabled"));
                    }
                })
            }
        }
    }
    Ok(member)
}

/// Checks one member against what DPS accepts and what the attestation kind needs.
pub fn checked(member: SetMember, kind: AttestationKind, line: usize) -> Result<Member, String> {
    let id = &member.registration_id;
    if id.is_empty() {
        return Err("has no registration id".into());
    }
    let id_limit = if kind == AttestationKind::X509 { 64 } else { 128 };
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._:".contains(c);
    if id.len() > id_limit
        || !id.chars().all(allowed)
        || !id.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!(
            "registration id {id:?} is not one DPS accepts: at most {id_limit} letters, digits and - . _ : ending in a \
             letter, digit or -"
        ));
    }
    if let Some(device) = &member.device_id
        && (device.len() > 128
            || !device.chars().all(|c| c.is_ascii_alphanumeric() || "-.+%_#*?!(),=@$'".contains(c)))
    {
        return Err(format!(
            "device id {device:?} of {id} is not one IoT Hub accepts: at most 128 letters, digits and - . + % _ # * ? ! ( ) , = @ $ '"
        ));
    }
    let needs = |what: &str, field: &Option<String>, wanted: bool| match (field, wanted) {
        (None, true) => Err(format!("{id} has no {what}, which {} attestation needs", kind_name(kind))),
        (Some(_), false) => {
            Err(format!("{id} has a {what}, which {} attestation does not take", kind_name(kind)))
        }
        _ => Ok(()),
    };
    needs("endorsementKey", &member.endorsement_key, kind == AttestationKind::Tpm)?;
    needs("certificate", &member.certificate, kind == AttestationKind::X509)?;
    if let Some(key) = &member.endorsement_key
        && BASE64.decode(key).is_err()
    {
        return Err(format!("the endorsementKey of {id} is not base64"));
    }
    let boxed = |text: Option<String>| text.map(String::into_boxed_str);
    Ok(Member {
        registration_id: member.registration_id.into_boxed_str(),
        device_id: boxed(member.device_id),
        endorsement_key: boxed(member.endorsement_key),
        certificate: boxed(member.certificate),
        provisioning_status: member.provisioning_status,
        line: line as u32,
    })
}

fn kind_name(kind: AttestationKind) -> &'static str {
    match kind {
        AttestationKind::SymmetricKey => "symmetricKey",
        AttestationKind::X509 => "x509",
        AttestationKind::Tpm => "tpm",
    }
}

/// All members of a set from its lists (`names[list]` naming each), sorted by lower-case id;
/// refuses an id listed twice, naming both places.
pub fn gather(lists: Vec<Vec<Member>>, names: &[String]) -> Result<Vec<Member>, ListError> {
    let mut first: HashMap<String, (usize, u32)> = HashMap::new();
    let mut all = Vec::with_capacity(lists.iter().map(Vec::len).sum());
    let place = |list: usize, line: u32| match names[list].as_str() {
        INLINE => format!("{INLINE}[{line}]"),
        name => format!("{name} line {line}"),
    };
    for (list, members) in lists.into_iter().enumerate() {
        for member in members {
            if let Some((earlier, at)) =
                first.insert(member.registration_id.to_ascii_lowercase(), (list, member.line))
            {
                return Err(ListError::Duplicate {
                    id: member.registration_id.into(),
                    first: place(earlier, at),
                    second: place(list, member.line),
                });
            }
            all.push(member);
        }
    }
    all.sort_unstable_by_key(|m| m.registration_id.to_ascii_lowercase());
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYMMETRIC: AttestationKind = AttestationKind::SymmetricKey;

    #[test]
    fn csv_with_a_header_reads_its_columns_and_skips_blank_and_comment_lines() {
        let text =
            "registrationId,deviceId,provisioningStatus\n# comment\n\nsensor-1,dev-1,\nsensor-2,,disabled\n";
        let members =
            parse("ConfigMap iot/fleet key members.csv", text, MemberListFormat::Csv, SYMMETRIC).unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(
            (&*members[0].registration_id, members[0].device_id.as_deref()),
            ("sensor-1", Some("dev-1"))
        );
        assert_eq!(members[0].provisioning_status, None);
        assert_eq!(members[1].provisioning_status, Some(ProvisioningStatus::Disabled));
    }

    #[test]
    fn csv_without_a_header_is_one_id_per_line() {
        let members = parse("l", "a-1\nb-2\n", MemberListFormat::Csv, SYMMETRIC).unwrap();
        assert_eq!(members.iter().map(|m| &*m.registration_id).collect::<Vec<_>>(), ["a-1", "b-2"]);
    }

    #[test]
    fn a_bad_line_is_named_with_its_number_and_what_is_wrong() {
        let name = "ConfigMap iot/fleet key members.csv";
        let text = "registrationId,deviceId\nok-1,d\n\nbad id!,d\n";
        let error = parse(name, text, MemberListFormat::Csv, SYMMETRIC).unwrap_err();
        assert_eq!(error, ListError::Line {
            list: name.into(),
            line: 4,
            problem: "registration id \"bad id!\" is not one DPS accepts: at most 128 letters, digits and - . _ : \
                      ending in a letter, digit or -"
                .into()
        });
        let text = "registrationId,colour\n";
        let error = parse(name, text, MemberListFormat::Csv, SYMMETRIC).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{name} line 1: the header names the column \"colour\"")),
            "{error}"
        );
        let error = parse(name, "registrationId\na,b\n", MemberListFormat::Csv, SYMMETRIC).unwrap_err();
        assert_eq!(error.to_string(), format!("{name} line 2: has 2 fields; the header names 1 columns"));
    }

    #[test]
    fn json_lines_are_members_and_a_broken_line_is_named() {
        let text = "{\"registrationId\": \"tpm-1\", \"endorsementKey\": \"AToAAQAL\"}\n{\"registrationId\": \"tpm-2\"\n";
        let error =
            parse("Secret iot/l key m.jsonl", text, MemberListFormat::JsonLines, AttestationKind::Tpm)
                .unwrap_err()
                .to_string();
        assert!(error.starts_with("Secret iot/l key m.jsonl line 2: is not a member as JSON: "), "{error}");
        let first =
            parse("l", text.lines().next().unwrap(), MemberListFormat::JsonLines, AttestationKind::Tpm);
        assert_eq!(first.unwrap()[0].endorsement_key.as_deref(), Some("AToAAQAL"));
    }

    #[test]
    fn attestation_material_must_match_the_kind() {
        let member = |key: Option<&str>| SetMember {
            registration_id: "d".into(),
            device_id: None,
            endorsement_key: key.map(Into::into),
            certificate: None,
            provisioning_status: None,
        };
        assert_eq!(
            checked(member(None), AttestationKind::Tpm, 1).unwrap_err(),
            "d has no endorsementKey, which tpm attestation needs"
        );
        assert_eq!(
            checked(member(Some("AAAA")), SYMMETRIC, 1).unwrap_err(),
            "d has a endorsementKey, which symmetricKey attestation does not take"
        );
        assert_eq!(
            checked(member(Some("!!")), AttestationKind::Tpm, 1).unwrap_err(),
            "the endorsementKey of d is not base64"
        );
    }

    #[test]
    fn an_id_listed_twice_is_refused_naming_both_places_case_insensitively() {
        let one = parse("l", "a\nB\n", MemberListFormat::Csv, SYMMETRIC).unwrap();
        let two = parse("l", "c\nb\n", MemberListFormat::Csv, SYMMETRIC).unwrap();
        let names = [INLINE.to_owned(), "ConfigMap iot/x key m.csv".to_owned()];
        assert_eq!(
            gather(vec![one.clone(), two], &names).unwrap_err(),
            ListError::Duplicate {
                id: "b".into(),
                first: "spec.members[2]".into(),
                second: "ConfigMap iot/x key m.csv line 2".into(),
            }
        );
        let ids: Vec<_> = gather(vec![one], &names).unwrap().into_iter().map(|m| m.registration_id).collect();
        assert_eq!(ids, ["a".into(), "B".into()] as [Box<str>; 2]);
    }

    #[test]
    fn the_format_follows_the_key_unless_the_spec_says() {
        assert_eq!(format_of("fleet.jsonl", None), MemberListFormat::JsonLines);
        assert_eq!(format_of("fleet.csv", None), MemberListFormat::Csv);
        assert_eq!(format_of("fleet", Some(MemberListFormat::JsonLines)), MemberListFormat::JsonLines);
    }
}
