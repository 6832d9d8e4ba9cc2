//! The cluster the plugin talks to, as kubectl would: the kubeconfig, its context and namespace.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::de::DeserializeOwned;

use super::Error;

/// The flags kubectl passes on to plugins' users.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The namespace of the operator, where a ClusterProvisioningService's Secrets are.
    #[arg(long, global = true, default_value = "dps-operator")]
    pub operator_namespace: String,
}

/// A client of the cluster and the namespace to work in.
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    pub operator_namespace: String,
}

impl ClusterArgs {
    pub async fn connect(&self) -> Result<Cluster, Error> {
        let options = KubeConfigOptions { context: self.context.clone(), ..Default::default() };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| Error::Input(format!("cannot read kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await
            }
            None => kube::Config::from_kubeconfig(&options).await,
        }
        .map_err(|e| Error::Input(format!("cannot use the kubeconfig: {e}")))?;
        let namespace = self.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let client =
            Client::try_from(config).map_err(|e| Error::Input(format!("cannot reach the cluster: {e}")))?;
        Ok(Cluster { client, namespace, operator_namespace: self.operator_namespace.clone() })
    }
}

impl Cluster {
    /// The namespaced object `name` of kind `K` in `namespace`, or an error naming it.
    pub async fn get<K>(&self, namespace: &str, name: &str) -> Result<K, Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let what = format!("{} {namespace}/{name}", K::kind(&()));
        let found = Api::<K>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|source| Error::Kube { action: format!("reading {what}"), source })?;
        found.ok_or_else(|| Error::NotFound(format!("{what} does not exist")))
    }

    /// The text in `key` of Secret `namespace/name`.
    pub async fn secret_text(&self, namespace: &str, name: &str, key: &str) -> Result<String, Error> {
        let secret: Secret = self.get(namespace, name).await?;
        let value = secret.data.unwrap_or_default().remove(key).map(|bytes| bytes.0);
        let value =
            value.ok_or_else(|| Error::NotFound(format!("Secret {namespace}/{name} has no key {key}")))?;
        String::from_utf8(value)
            .map_err(|_| Error::Input(format!("key {key} of Secret {namespace}/{name} is not text")))
    }

    /// The text in `key` of ConfigMap `namespace/name`.
    pub async fn config_map_text(&self, namespace: &str, name: &str, key: &str) -> Result<String, Error> {
        let map: ConfigMap = self.get(namespace, name).await?;
        let value = map.data.unwrap_or_default().remove(key);
        value.ok_or_else(|| Error::NotFound(format!("ConfigMap {namespace}/{name} has no key {key}")))
    }
}
