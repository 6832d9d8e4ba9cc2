//! The settings of the operator process.

use std::{collections::HashMap, time::Duration};

use crate::dps;

/// Settings of the operator process.
#[derive(Clone, Debug)]
pub struct Config {
    /// Drift check interval when neither the enrollment nor its connection sets one.
    pub drift_check_interval: Duration,
    /// How long before a certificate expires `CertificateExpiringSoon` turns True.
    pub certificate_expiry_warning: Duration,
    /// Where ClusterProvisioningService Secrets live.
    pub operator_namespace: String,
    /// How long one DPS request may take.
    pub dps_timeout: Duration,
    /// PEM certificates every connection trusts besides the system roots and its own caBundle.
    pub extra_ca_certificates: Option<String>,
    /// DPS host names to connect to at these addresses instead of what DNS says.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// The Azure workload identity environment (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`), read once at start.
    pub azure_environment: HashMap<String, String>,
    /// How many enrollments of each kind are reconciled at once (0: no limit).
    pub max_concurrent_reconciles: u16,
    /// Only enrollments whose labels match this selector are reconciled (a shard of the fleet);
    /// all when `None`.
    pub watch_label_selector: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            drift_check_interval: Duration::from_secs(600),
            certificate_expiry_warning: Duration::from_secs(30 * 24 * 3600),
            operator_namespace: "dps-operator".into(),
            dps_timeout: dps::ClientConfig::DEFAULT_TIMEOUT,
            extra_ca_certificates: None,
            resolve: Vec::new(),
            azure_environment: HashMap::new(),
            max_concurrent_reconciles: 16,
            watch_label_selector: None,
        }
    }
}
