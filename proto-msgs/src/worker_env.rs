//! The worker-environment contract: the variables a node sets when it starts a
//! worker process, read by the worker runtime (`manta`) at start and then
//! removed from its environment ([`ALL`]), so the token is not inherited by what
//! user code starts, and a subprocess does not enter worker mode.

/// Set to `1` in every worker process.
pub const WORKER_MODE: &str = "MANTA_WORKER_MODE";
/// The worker's id.
pub const WORKER_ID: &str = "MANTA_WORKER_ID";
/// The raylet's address.
pub const NODE_ADDRESS: &str = "MANTA_NODE_ADDRESS";
/// The node's id.
pub const NODE_ID: &str = "MANTA_NODE_ID";
/// The GCS address.
pub const GCS_ADDRESS: &str = "MANTA_GCS_ADDRESS";
/// The cluster token.
pub const TOKEN: &str = "MANTA_TOKEN";
/// The job.
pub const JOB_ID: &str = "MANTA_JOB_ID";
/// The job's namespace.
pub const NAMESPACE: &str = "MANTA_NAMESPACE";
/// The address workers listen on.
pub const NODE_IP: &str = "MANTA_NODE_IP";
/// The worker's runtime environment (a resolved `RuntimeEnvSpec` as JSON): the
/// parent of what the tasks and actors it submits inherit.
pub const RUNTIME_ENV: &str = "MANTA_RUNTIME_ENV";
/// The job's executable package (what the worker's own child tasks run).
pub const EXECUTABLE: &str = "MANTA_EXECUTABLE";
/// GPU ids assigned to the worker (also in `CUDA_VISIBLE_DEVICES`).
pub const GPU_IDS: &str = "MANTA_GPU_IDS";

/// The TLS certificate, key and CA files, when the cluster uses TLS (the same
/// variables a driver or the command line reads).
pub const TLS_CERT: &str = crate::net::tls::CERT_VAR;
/// See [`TLS_CERT`].
pub const TLS_KEY: &str = crate::net::tls::KEY_VAR;
/// See [`TLS_CERT`].
pub const TLS_CA: &str = crate::net::tls::CA_VAR;

/// Every variable above (the worker removes them all once read).
pub const ALL: [&str; 15] = [
    WORKER_MODE,
    WORKER_ID,
    NODE_ADDRESS,
    NODE_ID,
    GCS_ADDRESS,
    TOKEN,
    JOB_ID,
    NAMESPACE,
    NODE_IP,
    RUNTIME_ENV,
    EXECUTABLE,
    GPU_IDS,
    TLS_CERT,
    TLS_KEY,
    TLS_CA,
];
