//! Connecting to the Kubernetes API: from a kubeconfig file, or the usual
//! way (in-cluster service account, `$KUBECONFIG`, `~/.kube/config`).

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig file cannot be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// No configuration was found, or the client cannot be built.
    #[error("cannot connect to the Kubernetes API: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig`, or from the environment when `None`
/// (in-cluster service account first, as a DaemonSet runs). `https` API
/// servers are reached with rustls (the `ring` provider); plain `http`
/// (the embedded API server of labs and tests) works too.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client, ConnectError> {
    let Some(path) = kubeconfig else {
        return Ok(Client::try_default().await?);
    };
    let bad = |message: String| ConnectError::Kubeconfig {
        path: path.display().to_string(),
        message,
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    Ok(Client::try_from(config)?)
}
