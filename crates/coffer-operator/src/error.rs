use thiserror::Error;

/// Everything a reconcile can fail with. Each variant names the object and what was being done.
#[derive(Debug, Error)]
pub enum Error {
    /// The WalletPlatform's spec breaks a rule the schema cannot express.
    #[error("WalletPlatform {namespace}/{name} has an invalid spec: {message}")]
    InvalidSpec {
        namespace: String,
        name: String,
        message: String,
    },
    /// A ChainListener's spec breaks a rule (one its schema's CEL rules also state).
    #[error("ChainListener {namespace}/{listener} has an invalid spec: {message}")]
    InvalidListener {
        namespace: String,
        listener: String,
        message: String,
    },
    /// A referenced Secret does not exist.
    #[error("Secret {namespace}/{secret} (referenced by {referrer}) does not exist")]
    SecretMissing {
        namespace: String,
        secret: String,
        referrer: String,
    },
    /// The operator may not read a referenced Secret: its Role grants `get` only on the Secrets
    /// listed when it was installed (the chart's `watch.secrets`).
    #[error(
        "the operator may not read Secret {namespace}/{secret} (referenced by {referrer}): add it to the \
         chart's watch.secrets (or grant the operator get on it)"
    )]
    SecretForbidden {
        namespace: String,
        secret: String,
        referrer: String,
    },
    /// A referenced Secret lacks the key.
    #[error("Secret {namespace}/{secret} (referenced by {referrer}) has no key {key:?}")]
    SecretKeyMissing {
        namespace: String,
        secret: String,
        key: String,
        referrer: String,
    },
    /// A chain listener holding a signer key cannot be fenced in by a NetworkPolicy with what its
    /// resources declare.
    #[error("ChainListener {namespace}/{listener}: {message}")]
    EgressUndeclared {
        namespace: String,
        listener: String,
        message: String,
    },
    /// A call to the API server failed.
    #[error("failed to {action} {kind} {namespace}/{name}: {source}")]
    Kube {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// The object has no namespace (all Coffer kinds are namespaced).
    #[error("{kind} {name} has no namespace")]
    NotNamespaced { kind: &'static str, name: String },
    /// Adding or removing the finalizer failed, or the wrapped reconcile failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The condition and Event reason (PascalCase), from the error's category.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } | Error::InvalidListener { .. } => "InvalidSpec",
            Error::SecretMissing { .. } => "SecretMissing",
            Error::SecretForbidden { .. } => "SecretForbidden",
            Error::SecretKeyMissing { .. } => "SecretKeyMissing",
            Error::EgressUndeclared { .. } => "EgressUndeclared",
            Error::Kube { .. } => "ApiError",
            Error::NotNamespaced { .. } => "NotNamespaced",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "FinalizerFailed",
            },
        }
    }

    /// The `error` label of `coffer_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        self.reason()
    }

    /// Errors the user must fix (as opposed to transient API failures).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self.reason(),
            "InvalidSpec" | "SecretMissing" | "SecretForbidden" | "SecretKeyMissing" | "EgressUndeclared"
        )
    }

    pub(crate) fn kube(
        action: &'static str,
        kind: &'static str,
        namespace: &str,
        name: &str,
    ) -> impl FnOnce(kube::Error) -> Error {
        let (namespace, name) = (namespace.to_string(), name.to_string());
        move |source| Error::Kube {
            action,
            kind,
            namespace,
            name,
            source: Box::new(source),
        }
    }
}

/// True when the API server answered 403.
pub(crate) fn is_forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_forbidden())
}

/// True when the API server answered 404.
pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found())
}
