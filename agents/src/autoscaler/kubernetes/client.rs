//! [`KubeApi`] over the `kube` client (feature `k8s`): in-cluster service
//! account or the kubeconfig, as `kubectl` finds it.

use serde_json::Value;
use tokio::sync::OnceCell;

use super::{ApiRequest, KubeApi};
use crate::autoscaler::provider::ProviderFuture;

/// The API server, reached with the first request.
pub struct KubeClient {
    client: OnceCell<kube::Client>,
}

impl KubeClient {
    /// A client that connects on first use.
    pub fn new() -> Result<KubeClient, String> {
        Ok(KubeClient { client: OnceCell::new() })
    }

    async fn client(&self) -> Result<&kube::Client, String> {
        self.client
            .get_or_try_init(|| async {
                kube::Client::try_default()
                    .await
                    .map_err(|error| format!("cannot reach the Kubernetes API server: {error}"))
            })
            .await
    }
}

impl KubeApi for KubeClient {
    fn send(&self, request: ApiRequest) -> ProviderFuture<'_, Value> {
        Box::pin(async move {
            let client = self.client().await?;
            let body = match &request.body {
                Some(body) => serde_json::to_vec(body).map_err(|error| error.to_string())?,
                None => Vec::new(),
            };
            let http_request = ::http::Request::builder()
                .method(request.method)
                .uri(&request.path)
                .header("content-type", "application/json")
                .body(body)
                .map_err(|error| error.to_string())?;
            let text = client
                .request_text(http_request)
                .await
                .map_err(|error| format!("{} {}: {error}", request.method, request.path))?;
            serde_json::from_str(&text)
                .map_err(|error| format!("{} {}: not JSON: {error}", request.method, request.path))
        })
    }
}
