//! The gate in front of every gRPC server's services: each call is
//! authenticated by the server's `authenticationPolicy` (refused:
//! UNAUTHENTICATED), then authorized by what governs its service in
//! [`GOVERNED_SERVICES`] (refused: PERMISSION_DENIED). Health and
//! reflection, as in bb-storage, pass the authentication policy only; a
//! service missing from the table is refused. Refusals are logged, rate-limited
//! ([`RefusalLog`]); the gRPC metrics, outside this layer, count them by
//! their code.
//!
//! A call's metadata is added to its request's extensions for the
//! services behind the gate.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use rustls_pki_types::UnixTime;
use tonic::{Code, Status};
use tower::Service;

use super::authorizer::{Authorizer, AuthorizerConfig};
use super::jmespath::ExpressionError;
use super::metadata::AuthenticationMetadata;
use super::policy::{Policy, PolicyConfig, PolicyError};
use super::refusals::RefusalLog;
use crate::bounded::bounded_message;
use crate::listener::peer::ConnectionPeer;

/// What admits an authenticated call to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Governed {
    /// `runAuthorizer`: running actions, and asking whether the runner can.
    Run,
    /// `eventsAuthorizer`: reading what the runner does.
    Events,
    /// Authentication alone, as bb-storage serves health and reflection.
    AuthenticationOnly,
}

/// Every service the servers serve, by gRPC service name, with what
/// admits its calls. A new service is one line here; a service missing
/// from it is refused (PERMISSION_DENIED), so that nothing is served
/// ungoverned by mistake.
pub const GOVERNED_SERVICES: &[(&str, Governed)] = &[
    ("buildbarn.runner.Runner", Governed::Run),
    ("rbe_runner.events.v1.Events", Governed::Events),
    // An action's output may hold what its events hold and more.
    ("rbe_runner.output.v1.Output", Governed::Events),
    ("grpc.health.v1.Health", Governed::AuthenticationOnly),
    (
        "grpc.reflection.v1.ServerReflection",
        Governed::AuthenticationOnly,
    ),
];

/// The authorizers of one server, as configured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthorizersConfig {
    /// `runAuthorizer`: `Run` and `CheckReadiness`.
    pub run: AuthorizerConfig,
    /// `eventsAuthorizer`: `Events.Subscribe`.
    pub events: AuthorizerConfig,
}

/// Why a server's gate cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{path}: {source}")]
    Authorizer {
        path: String,
        source: ExpressionError,
    },
}

/// One server's policy and authorizers, started.
#[derive(Debug)]
pub struct CallGate {
    policy: Policy,
    run: Authorizer,
    events: Authorizer,
    refusals: RefusalLog,
}

impl CallGate {
    /// Starts the gate of the server at `path` (`grpcServers[0]`).
    pub fn start(
        policy: &PolicyConfig,
        authorizers: &AuthorizersConfig,
        path: &str,
    ) -> Result<Self, GateError> {
        let authorizer = |config: &AuthorizerConfig, name: &str| {
            Authorizer::start(config).map_err(|source| GateError::Authorizer {
                // The authorizers are top-level fields.
                path: format!("{name}.jmespathExpression"),
                source,
            })
        };
        Ok(CallGate {
            policy: Policy::start(policy, &format!("{path}.authenticationPolicy"))?,
            run: authorizer(&authorizers.run, "runAuthorizer")?,
            events: authorizer(&authorizers.events, "eventsAuthorizer")?,
            refusals: RefusalLog::default(),
        })
    }

    /// Whether every caller may run actions: the policy is `allow` and
    /// so is `runAuthorizer`. Only then is a socket's file mode all that
    /// stands between a local user and the runner.
    pub fn lets_anyone_run(&self) -> bool {
        matches!(self.policy, Policy::Allow(_)) && matches!(self.run, Authorizer::Allow)
    }

    /// Whether the call to `path` (`/service/method`) from `peer` may
    /// proceed, with the caller's metadata; else the status to answer.
    pub fn admit(
        &self,
        path: &str,
        peer: Option<&ConnectionPeer>,
    ) -> Result<AuthenticationMetadata, Status> {
        let metadata = match self.policy.authenticate(peer, UnixTime::now()) {
            Ok(metadata) => metadata,
            Err(reason) => {
                self.refusals
                    .refused(path, peer, Code::Unauthenticated, &reason);
                return Err(Status::unauthenticated(bounded_message(reason)));
            }
        };
        let (authorizer, name) = match governed(path) {
            Some(Governed::AuthenticationOnly) => return Ok(metadata),
            Some(Governed::Run) => (&self.run, "runAuthorizer"),
            Some(Governed::Events) => (&self.events, "eventsAuthorizer"),
            None => {
                self.refusals.refused(
                    path,
                    peer,
                    Code::PermissionDenied,
                    "its service is not in GOVERNED_SERVICES (src/auth/gate.rs)",
                );
                let reason = format!("permission denied: {path} is not a method of this runner");
                return Err(Status::permission_denied(bounded_message(reason)));
            }
        };
        if authorizer.allows(&metadata) {
            return Ok(metadata);
        }
        let reason = format!("permission denied: {name} does not allow this caller");
        self.refusals
            .refused(path, peer, Code::PermissionDenied, &reason);
        Err(Status::permission_denied(reason))
    }
}

/// What governs the service of `path` (`/service/method`); `None` for a
/// service not in [`GOVERNED_SERVICES`].
fn governed(path: &str) -> Option<Governed> {
    let service = path.strip_prefix('/')?.split('/').next()?;
    GOVERNED_SERVICES
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, governed)| *governed)
}

/// Puts a [`CallGate`] in front of `inner`: refused calls are answered
/// here, admitted ones go on with their metadata in the extensions.
#[derive(Clone)]
pub struct Authenticating<S> {
    inner: S,
    gate: Arc<CallGate>,
}

impl<S> Authenticating<S> {
    pub fn new(inner: S, gate: Arc<CallGate>) -> Self {
        Authenticating { inner, gate }
    }
}

impl<S, B> Service<http::Request<B>> for Authenticating<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Either<std::future::Ready<Result<Self::Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let peer = request.extensions().get::<ConnectionPeer>();
        match self.gate.admit(request.uri().path(), peer) {
            Ok(metadata) => {
                request.extensions_mut().insert(metadata);
                Either::Right(self.inner.call(request))
            }
            Err(status) => Either::Left(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jmespath::ExpressionConfig;
    use crate::listener::peer::{PeerCredentials, PeerTransport};

    fn unix(uid: u32) -> ConnectionPeer {
        ConnectionPeer {
            transport: PeerTransport::Unix {
                credentials: Some(PeerCredentials {
                    uid,
                    gid: uid,
                    pid: None,
                }),
            },
            client_certificates: Arc::from(Vec::new()),
        }
    }

    fn expression(text: &str) -> ExpressionConfig {
        ExpressionConfig {
            expression: text.into(),
            ..ExpressionConfig::default()
        }
    }

    /// The README's example: only uid 65534 may run actions.
    fn only_nobody_runs() -> CallGate {
        CallGate::start(
            &PolicyConfig::PeerCredentials(expression("{private: {uid: uid}}")),
            &AuthorizersConfig {
                run: AuthorizerConfig::JmespathExpression(expression(
                    "authenticationMetadata.private.uid == `65534`",
                )),
                events: AuthorizerConfig::Allow,
            },
            "grpcServers[0]",
        )
        .unwrap()
    }

    /// Why: the runner's own methods are what runAuthorizer protects;
    /// events stay readable by whoever eventsAuthorizer allows.
    #[test]
    fn each_service_is_governed_by_its_authorizer() {
        let gate = only_nobody_runs();
        for method in [
            "/buildbarn.runner.Runner/Run",
            "/buildbarn.runner.Runner/CheckReadiness",
        ] {
            assert!(gate.admit(method, Some(&unix(65534))).is_ok());
            let status = gate.admit(method, Some(&unix(0))).unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied);
            assert!(status.message().contains("runAuthorizer"), "{status:?}");
        }
        assert!(gate
            .admit("/rbe_runner.events.v1.Events/Subscribe", Some(&unix(0)))
            .is_ok());
    }

    /// Why: health and reflection must answer every authenticated caller
    /// (probes), as in bb-storage, but never an unauthenticated one.
    #[test]
    fn health_and_reflection_need_authentication_only() {
        let gate = only_nobody_runs();
        for method in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(gate.admit(method, Some(&unix(0))).is_ok(), "{method}");
            let tcp = ConnectionPeer {
                transport: PeerTransport::Tcp { address: None },
                client_certificates: Arc::from(Vec::new()),
            };
            let status = gate.admit(method, Some(&tcp)).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{method}");
            assert!(status.message().contains("UNIX socket"), "{status:?}");
        }
    }

    /// Why: a service added to the servers but not to the table must be
    /// refused, not served to every authenticated caller.
    #[test]
    fn a_service_missing_from_the_table_is_refused() {
        let gate = only_nobody_runs();
        let status = gate
            .admit("/rbe_runner.unknown.v1.Unknown/Call", Some(&unix(65534)))
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.message().contains("not a method"), "{status:?}");
        assert!(gate.admit("no-slash", Some(&unix(65534))).is_err());
    }

    #[tokio::test]
    async fn a_refused_call_is_answered_without_reaching_the_service() {
        let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let inner = {
            let reached = reached.clone();
            tower::service_fn(move |_: http::Request<()>| {
                reached.store(true, std::sync::atomic::Ordering::SeqCst);
                std::future::ready(Ok::<_, Infallible>(http::Response::new(
                    tonic::body::Body::empty(),
                )))
            })
        };
        let mut service = Authenticating::new(inner, Arc::new(only_nobody_runs()));
        let mut request = http::Request::new(());
        *request.uri_mut() = "/buildbarn.runner.Runner/Run".parse().unwrap();
        request.extensions_mut().insert(unix(1000));
        let response = service.call(request).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "7");
        assert!(!reached.load(std::sync::atomic::Ordering::SeqCst));
    }
}
