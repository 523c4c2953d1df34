//! A test cluster: the in-memory API server with the Switchyard CRDs
//! installed, a kubeconfig on disk for processes (the operator, kubectl),
//! a client for the test itself, and helpers to register a fleet.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard_crds::{FleetNode, FleetNodeSpec, NetworkMode};

use crate::apiserver::{ApiServer, Config};

/// A running in-memory cluster with the Switchyard CRDs.
pub struct TestCluster {
    /// The API server.
    pub server: ApiServer,
    /// A client for it.
    pub client: Client,
    /// A scratch directory, removed by [`TestCluster::stop`].
    pub dir: PathBuf,
    /// A kubeconfig file pointing at the server.
    pub kubeconfig: PathBuf,
}

/// A kube client for `server`.
pub async fn client_for(server: &ApiServer) -> anyhow::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

impl TestCluster {
    /// Start a server with `config`, install the CRDs and write a
    /// kubeconfig under a scratch directory named after `name`.
    pub async fn start(config: Config, name: &str) -> anyhow::Result<Self> {
        let server = ApiServer::start(config).await?;
        let client = client_for(&server).await?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in switchyard_crds::crdgen::crds() {
            crds.create(&PostParams::default(), &crd)
                .await
                .with_context(|| format!("installing CRD {}", crd.name_any()))?;
        }
        let dir = std::env::temp_dir().join(format!("switchyard-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let kubeconfig = server.write_kubeconfig(&dir.join("kubeconfig"))?;
        Ok(TestCluster {
            server,
            client,
            dir,
            kubeconfig,
        })
    }

    /// A kubeconfig (written under the scratch directory) for
    /// ServiceAccount `namespace/name`, created if missing, with a token
    /// bound to `pod` when given. Only means something with
    /// [`Config::authorization`] on.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        pod: Option<&str>,
    ) -> anyhow::Result<PathBuf> {
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), namespace);
        if sas.get_opt(name).await?.is_none() {
            let sa = k8s_openapi::api::core::v1::ServiceAccount {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_owned()),
                    ..Default::default()
                },
                ..Default::default()
            };
            sas.create(&PostParams::default(), &sa).await?;
        }
        let token = self.server.app.tokens.service_account(namespace, name, pod);
        let path = self.dir.join(format!(
            "kubeconfig-{namespace}-{name}-{}",
            pod.unwrap_or("any")
        ));
        std::fs::write(&path, self.server.kubeconfig_for(&token, namespace))?;
        Ok(path)
    }

    /// Create a namespace.
    pub async fn namespace(&self, name: &str) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(())
    }

    /// Register FleetNodes as their agents would: created with `labels`,
    /// then reporting `mode` as applied.
    pub async fn register_nodes(
        &self,
        namespace: &str,
        names: impl IntoIterator<Item = String>,
        labels: &BTreeMap<String, String>,
        mode: NetworkMode,
    ) -> anyhow::Result<()> {
        let nodes: Api<FleetNode> = Api::namespaced(self.client.clone(), namespace);
        // A few at a time, as a fleet's agents starting together would.
        futures::stream::iter(names)
            .map(|name| {
                let nodes = nodes.clone();
                async move {
                    let mut n = FleetNode::new(&name, FleetNodeSpec::default());
                    n.metadata.labels = Some(labels.clone());
                    nodes
                        .create(&PostParams::default(), &n)
                        .await
                        .with_context(|| format!("creating FleetNode {name}"))?;
                    nodes
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(
                                json!({"status": {"appliedMode": mode, "observedGeneration": 1}}),
                            ),
                        )
                        .await
                        .with_context(|| format!("reporting FleetNode {name}'s mode"))?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Stop the server and remove the scratch directory.
    pub async fn stop(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.server.stop().await;
    }
}
