//! Who may call the runner, with Buildbarn's semantics.
//!
//! Each `grpcServers` entry has an `authenticationPolicy`, which turns the
//! connection a call came on (its Unix peer credentials, its TLS client
//! certificate: [`crate::listener::peer::ConnectionPeer`]) into
//! authentication metadata or a refusal (UNAUTHENTICATED), and two
//! authorizers, rbe-runner's extension in Buildbarn's
//! `AuthorizerConfiguration` shape, which decide from that metadata whether
//! a call may run actions (`runAuthorizer`) or read events
//! (`eventsAuthorizer`) (refusal: PERMISSION_DENIED).
//!
//! Module map:
//! - [`jmespath`]: Buildbarn's JMESPath expression with its files and test vectors.
//! - [`metadata`]: authentication metadata and the `all` policy's merge.
//! - [`policy`]: the policy tree (`allow`, `deny`, `any`, `all`, peer credentials, client certificates).
//! - [`client_certificate`]: verifying a client's certificate against the policy's CAs, and its claims.
//! - [`authorizer`]: `allow`, `deny`, `jmespathExpression`.
//! - [`gate`]: the tower layer in front of a server's services, and which authorizer governs which service.
//! - [`refusals`]: the rate-limited log of refused calls.

pub mod authorizer;
pub mod client_certificate;
pub mod gate;
pub mod jmespath;
pub mod metadata;
pub mod policy;
pub mod refusals;
