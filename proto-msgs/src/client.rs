//! Typed clients, one per service, used by the node, the GCS and the user
//! crate alike: [`GcsClient`], [`NodeClient`], [`WorkerClient`]. Each is a
//! cheap handle over a [`PeerHandle`] and a deadline; its generic `call`
//! accepts only requests its service answers (checked when compiling) and
//! returns their typed reply (see [`crate::rpc`]).

use std::time::Duration;

use crate::net::{CallError, PeerHandle};
use crate::rpc::{Rpc, Service};

mod gcs;

pub use gcs::{DEFAULT_GCS_TIMEOUT, GcsClient};

macro_rules! service_client {
    ($(#[$doc:meta])* $client:ident, $service:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $client {
            peer: PeerHandle,
            timeout: Duration,
        }

        impl $client {
            /// A client over `peer` whose calls wait at most `timeout`.
            pub fn new(peer: PeerHandle, timeout: Duration) -> Self {
                Self { peer, timeout }
            }

            /// The same link with another deadline.
            pub fn with_timeout(&self, timeout: Duration) -> Self {
                Self { peer: self.peer.clone(), timeout }
            }

            /// The underlying link.
            pub fn peer(&self) -> &PeerHandle {
                &self.peer
            }

            /// Sends a request this service answers and returns its typed reply.
            pub async fn call<R: Rpc>(&self, request: R) -> Result<R::Reply, CallError> {
                const { assert!(matches!(R::SPEC.service, Service::$service), "this service does not answer that request") };
                self.peer.rpc(request, self.timeout).await
            }
        }
    };
}

service_client!(
    /// Calls a node answers: leases, workers, objects, bundles, logs.
    NodeClient,
    Node
);

service_client!(
    /// Calls a worker or driver answers: tasks, actor creation, owned objects, cancels.
    WorkerClient,
    Worker
);
