//! `kubectl dps status`: the connections, the enrollments (sets among them) counted by state, the
//! sets' members by state, and each resource that is not Ready with its reason, on one screen.

use std::collections::BTreeMap;

use kube::{Api, api::ListParams};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{Error, cluster::ClusterArgs};
use crate::api::{
    ClusterProvisioningService, EnrollmentGroup, IndividualEnrollment, IndividualEnrollmentSet, MemberCounts,
    ProvisioningService,
};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// One object as the screen shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    /// The Ready condition: status, reason, message.
    pub ready: Option<(String, String, String)>,
    pub host: Option<String>,
    /// A set's members by state.
    pub members: Option<MemberCounts>,
}

impl Row {
    fn of(kind: &'static str, object: &impl Serialize) -> Self {
        let value = serde_json::to_value(object).unwrap_or_default();
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let ready = value["status"]["conditions"].as_array().and_then(|conditions| {
            let ready = conditions.iter().find(|c| c["type"] == "Ready")?;
            Some((
                text(&ready["status"]).unwrap_or_default(),
                text(&ready["reason"]).unwrap_or_default(),
                text(&ready["message"]).unwrap_or_default(),
            ))
        });
        Self {
            kind,
            namespace: text(&value["metadata"]["namespace"]),
            name: text(&value["metadata"]["name"]).unwrap_or_default(),
            ready,
            host: text(&value["status"]["host"]),
            members: serde_json::from_value(value["status"]["counts"].clone()).ok(),
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.as_ref().is_some_and(|(status, _, _)| status == "True")
    }

    fn reason(&self) -> &str {
        self.ready.as_ref().map_or("NotSyncedYet", |(_, reason, _)| reason.as_str())
    }

    fn qualified(&self) -> String {
        let kind = self.kind.to_ascii_lowercase();
        match &self.namespace {
            Some(namespace) => format!("{namespace}/{kind}/{}", self.name),
            None => format!("{kind}/{}", self.name),
        }
    }
}

pub async fn run(cluster_args: &ClusterArgs, args: StatusArgs) -> Result<(), Error> {
    let cluster = cluster_args.connect().await?;
    let namespace = (!args.all_namespaces).then_some(cluster.namespace.as_str());
    let client = &cluster.client;
    let mut connections = list::<ProvisioningService>(client, namespace, "ProvisioningService").await?;
    connections.extend(cluster_scoped(client).await?);
    let mut enrollments = list::<EnrollmentGroup>(client, namespace, "EnrollmentGroup").await?;
    enrollments.extend(list::<IndividualEnrollment>(client, namespace, "IndividualEnrollment").await?);
    enrollments.extend(list::<IndividualEnrollmentSet>(client, namespace, "IndividualEnrollmentSet").await?);
    let scope = namespace.map_or("all namespaces".to_owned(), |n| format!("namespace {n}"));
    print!("{}", render(&scope, &connections, &enrollments));
    Ok(())
}

async fn list<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    kind: &'static str,
) -> Result<Vec<Row>, Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api = match namespace {
        Some(namespace) => Api::<K>::namespaced(client.clone(), namespace),
        None => Api::<K>::all(client.clone()),
    };
    let listed = api.list(&ListParams::default()).await;
    let listed = listed.map_err(|source| Error::Kube { action: format!("listing {kind}s"), source })?;
    Ok(listed.items.iter().map(|object| Row::of(kind, object)).collect())
}

async fn cluster_scoped(client: &kube::Client) -> Result<Vec<Row>, Error> {
    let api = Api::<ClusterProvisioningService>::all(client.clone());
    let listed = api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Kube { action: "listing ClusterProvisioningServices".into(), source })?;
    Ok(listed.items.iter().map(|object| Row::of("ClusterProvisioningService", object)).collect())
}

/// The screen.
pub fn render(scope: &str, connections: &[Row], enrollments: &[Row]) -> String {
    let mut out = format!("Connections ({scope}, and cluster-wide):\n");
    if connections.is_empty() {
        out.push_str("  none\n");
    } else {
        let rows = connections.iter().map(|c| {
            let (status, reason) =
                c.ready.as_ref().map_or(("Unknown", "-"), |(s, r, _)| (s.as_str(), r.as_str()));
            [
                c.qualified(),
                status.to_owned(),
                reason.to_owned(),
                c.host.clone().unwrap_or_else(|| "-".into()),
            ]
        });
        out.push_str(&indent(&table(&["CONNECTION", "READY", "REASON", "HOST"], rows)));
    }
    out.push_str("\nEnrollments:\n");
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for row in enrollments {
        *counts.entry((row.kind, row.reason())).or_default() += 1;
    }
    if counts.is_empty() {
        out.push_str("  none\n");
    } else {
        let rows = counts
            .iter()
            .map(|((kind, reason), count)| [kind.to_string(), reason.to_string(), count.to_string()]);
        out.push_str(&indent(&table(&["KIND", "REASON", "COUNT"], rows)));
    }
    out.push_str(&set_members(enrollments));
    let not_ready: Vec<&Row> = connections.iter().chain(enrollments).filter(|row| !row.is_ready()).collect();
    if not_ready.is_empty() {
        out.push_str(&format!(
            "\nAll {} enrollments and connections are Ready.\n",
            enrollments.len() + connections.len()
        ));
        return out;
    }
    out.push_str(&format!("\nNot Ready ({}):\n", not_ready.len()));
    let rows = not_ready.iter().map(|row| {
        let message = row.ready.as_ref().map_or("the operator has not synced it yet", |(_, _, m)| m.as_str());
        [row.qualified(), row.reason().to_owned(), message.to_owned()]
    });
    out.push_str(&indent(&table(&["RESOURCE", "REASON", "MESSAGE"], rows)));
    out
}

/// The sets' members by state, a line per set; nothing when there is no set.
fn set_members(enrollments: &[Row]) -> String {
    let sets: Vec<(&Row, &MemberCounts)> =
        enrollments.iter().filter_map(|row| Some((row, row.members.as_ref()?))).collect();
    if sets.is_empty() {
        return String::new();
    }
    let rows = sets.iter().map(|(row, c)| {
        let [members, ready, pending, failed, conflicts] =
            [c.members, c.ready, c.pending, c.failed, c.conflicts].map(|n| n.to_string());
        [row.qualified(), members, ready, pending, failed, conflicts]
    });
    let header = ["SET", "MEMBERS", "READY", "PENDING", "FAILED", "CONFLICTS"];
    format!("\nSet members:\n{}", indent(&table(&header, rows)))
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// Columns padded to their widest cell, as kubectl prints them.
pub fn table<const N: usize>(header: &[&str; N], rows: impl Iterator<Item = [String; N]>) -> String {
    let rows: Vec<[String; N]> = std::iter::once(header.map(str::to_owned)).chain(rows).collect();
    let widths: Vec<usize> =
        (0..N).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> =
            row.iter().enumerate().map(|(i, cell)| format!("{cell:<width$}", width = widths[i])).collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &'static str, name: &str, ready: Option<(&str, &str, &str)>) -> Row {
        Row {
            kind,
            namespace: Some("iot".into()),
            name: name.into(),
            ready: ready.map(|(s, r, m)| (s.into(), r.into(), m.into())),
            host: None,
            members: None,
        }
    }

    #[test]
    fn the_screen_counts_by_reason_and_lists_what_is_not_ready_with_its_message() {
        let connections = [Row {
            host: Some("contoso.example".into()),
            ..row("ProvisioningService", "dps", Some(("True", "Connected", "")))
        }];
        let enrollments = [
            row("EnrollmentGroup", "thermostats", Some(("True", "Synced", ""))),
            row(
                "IndividualEnrollment",
                "boiler",
                Some(("False", "SecretNotFound", "Secret iot/boiler-keys does not exist")),
            ),
            row("IndividualEnrollment", "heater", None),
        ];
        let screen = render("namespace iot", &connections, &enrollments);
        assert!(
            screen.contains("iot/provisioningservice/dps   True    Connected   contoso.example"),
            "{screen}"
        );
        assert!(screen.contains("IndividualEnrollment   SecretNotFound   1"), "{screen}");
        assert!(screen.contains("Not Ready (2):"), "{screen}");
        assert!(
            screen.contains(
                "iot/individualenrollment/boiler   SecretNotFound   Secret iot/boiler-keys does not exist"
            ),
            "{screen}"
        );
        assert!(screen.contains("NotSyncedYet"), "{screen}");
        let all_ready = render("namespace iot", &connections, &enrollments[..1]);
        assert!(all_ready.ends_with("All 2 enrollments and connections are Ready.\n"), "{all_ready}");
        assert!(!all_ready.contains("Set members"), "{all_ready}");
    }

    #[test]
    fn a_sets_members_are_counted_by_state_beside_its_own_readiness() {
        let counts = MemberCounts { members: 27, ready: 24, pending: 0, failed: 2, conflicts: 1 };
        let sets = [
            Row {
                members: Some(counts),
                ..row(
                    "IndividualEnrollmentSet",
                    "fleet",
                    Some(("False", "MembersFailed", "2 members failed")),
                )
            },
            row("IndividualEnrollmentSet", "new", None),
        ];
        let screen = render("namespace iot", &[], &sets);
        assert!(screen.contains("IndividualEnrollmentSet   MembersFailed   1"), "{screen}");
        assert!(
            screen.contains(
                "SET                                 MEMBERS   READY   PENDING   FAILED   CONFLICTS"
            ),
            "{screen}"
        );
        assert!(
            screen.contains("iot/individualenrollmentset/fleet   27        24      0         2        1"),
            "{screen}"
        );
        let members = &screen[screen.find("Set members:").unwrap()..screen.find("Not Ready").unwrap()];
        assert!(!members.contains("/new"), "a set without counts has no line: {screen}");
        assert!(
            screen.contains("iot/individualenrollmentset/fleet   MembersFailed   2 members failed"),
            "{screen}"
        );
    }
}
