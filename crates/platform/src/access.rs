//! Who may do what over HTTP, and how often: the admin token that guards the operations that change
//! what a service holds outside the saga (catalog writes, the gateway simulator's faults), and the
//! per-client rate limit of a service's own routes.
//!
//! The token comes from `ORDERFLOW_ADMIN_TOKEN`. Without one, admin operations are refused: an
//! instance nobody configured is a locked one, not an open one.

use crate::http::ApiError;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The bearer token admin operations require. Its `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl AdminToken {
    /// Shorter tokens are refused at start: a guessable token is no lock.
    pub const MIN_LEN: usize = 16;
    pub const MAX_LEN: usize = 256;

    /// The value parser of `--admin-token` / `ORDERFLOW_ADMIN_TOKEN`: 16 to 256 visible ASCII
    /// characters. The error never repeats the value.
    pub fn parse(raw: &str) -> Result<AdminToken, String> {
        let visible = raw.bytes().all(|b| b.is_ascii_graphic());
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&raw.len()) || !visible {
            return Err(format!(
                "an admin token is {} to {} visible ASCII characters (no spaces); generate one with \
                 `openssl rand -hex 32`",
                Self::MIN_LEN,
                Self::MAX_LEN
            ));
        }
        Ok(AdminToken(raw.into()))
    }

    /// A new random token: 32 bytes of a cryptographically secure generator (rand's, seeded by the
    /// OS), as 64 hex digits.
    pub fn generate() -> AdminToken {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        AdminToken(hex.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compared in constant time, so that the answer's timing does not reveal how much of a guess
    /// was right (only whether its length was).
    fn admits(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// The admin token a server was started with, if any: a request extension set by
/// [`crate::http::with_common_routes`], read by [`Admin`].
#[derive(Clone, Debug, Default)]
pub struct AdminAccess(pub Option<AdminToken>);

/// An extractor that admits the request only with `Authorization: Bearer <the admin token>`. Put it
/// first in an admin handler's arguments: it runs before the body is read, so a refused request
/// changes nothing. Missing or malformed credentials give 401, a wrong token (or a server without
/// one) 403.
#[derive(Debug)]
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer);
        let Some(presented) = presented else {
            return Err(ApiError::Unauthorized(
                "this is an admin operation: send Authorization: Bearer <ORDERFLOW_ADMIN_TOKEN>"
                    .into(),
            ));
        };
        match parts.extensions.get::<AdminAccess>() {
            Some(AdminAccess(Some(token))) if token.admits(presented) => Ok(Admin),
            Some(AdminAccess(Some(_))) => Err(ApiError::Forbidden(
                "the admin token is not this server's ORDERFLOW_ADMIN_TOKEN".into(),
            )),
            _ => Err(ApiError::Forbidden(
                "admin operations are disabled: this server was started without \
                 ORDERFLOW_ADMIN_TOKEN"
                    .into(),
            )),
        }
    }
}

/// The credentials of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// The OpenAPI security scheme of admin operations (`bearerAuth`), for the services' documents.
pub fn document_admin_security(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        ADMIN_SECURITY,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The server's ORDERFLOW_ADMIN_TOKEN (`orderflow up` generates one and saves it \
                     in its data dir as admin-token).",
                ))
                .build(),
        ),
    );
}

/// Clients whose state the rate limiter keeps before it forgets those that could burst again anyway
/// (a bound on its memory, whoever connects).
const TRACKED_CLIENTS: usize = 10_000;

/// The per-client limit of a service's own routes: `per_second` requests a second from one IP
/// address on average, `burst` at once.
#[derive(Clone)]
pub struct ClientRateLimit {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for ClientRateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientRateLimit")
    }
}

impl ClientRateLimit {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        ClientRateLimit {
            limiter: Arc::new(RateLimiter::keyed(quota)),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when `client` is over its limit: how long until its next request is allowed.
    fn check(&self, client: IpAddr) -> Result<(), std::time::Duration> {
        let verdict = self.limiter.check_key(&client);
        if self.limiter.len() > TRACKED_CLIENTS {
            self.limiter.retain_recent();
        }
        verdict.map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// Answers 429 with `Retry-After` to a client over its rate limit, before the handler runs (so
/// nothing changes); everything else passes. Clients are told apart by IP address: behind a proxy
/// that does not keep it, every client is the proxy.
pub async fn limit_per_client(
    State(limit): State<ClientRateLimit>,
    request: Request,
    next: Next,
) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    if let Some(client) = client
        && let Err(wait) = limit.check(client)
    {
        return ApiError::RateLimited { retry_after: wait }.into_response();
    }
    next.run(request).await
}

/// The security scheme's name: admin routes say `security(("bearerAuth" = []))`.
pub const ADMIN_SECURITY: &str = "bearerAuth";

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    async fn admit(server: Option<&str>, authorization: Option<&str>) -> Result<Admin, ApiError> {
        let mut request = Request::builder().uri("/products/x");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        parts.extensions.insert(AdminAccess(
            server.map(|token| AdminToken::parse(token).unwrap()),
        ));
        Admin::from_request_parts(&mut parts, &()).await
    }

    const TOKEN: &str = "0123456789abcdef0123";

    #[tokio::test]
    async fn only_the_servers_token_is_admitted() {
        assert!(
            admit(Some(TOKEN), Some(&format!("Bearer {TOKEN}")))
                .await
                .is_ok()
        );
        assert!(
            admit(Some(TOKEN), Some(&format!("bearer  {TOKEN}")))
                .await
                .is_ok()
        );
        for missing in [
            None,
            Some("Basic abc"),
            Some("Bearer"),
            Some("Bearer "),
            Some(TOKEN),
        ] {
            assert!(
                matches!(
                    admit(Some(TOKEN), missing).await,
                    Err(ApiError::Unauthorized(_))
                ),
                "{missing:?}"
            );
        }
        for wrong in [
            "Bearer 0123456789abcdef012",
            "Bearer 0123456789abcdef01234",
            "Bearer x",
        ] {
            assert!(
                matches!(
                    admit(Some(TOKEN), Some(wrong)).await,
                    Err(ApiError::Forbidden(_))
                ),
                "{wrong}"
            );
        }
        let unset = admit(None, Some(&format!("Bearer {TOKEN}"))).await;
        assert!(matches!(unset, Err(ApiError::Forbidden(reason)) if reason.contains("disabled")));
    }

    #[test]
    fn a_client_over_its_limit_waits_and_others_do_not() {
        let limit = ClientRateLimit::new(NonZeroU32::MIN, NonZeroU32::new(2).unwrap());
        let (busy, other) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        assert!(limit.check(busy).is_ok());
        assert!(limit.check(busy).is_ok());
        let wait = limit.check(busy).unwrap_err();
        assert!(wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(1));
        assert!(limit.check(other).is_ok());
    }

    #[test]
    fn weak_tokens_are_refused_without_repeating_them() {
        for weak in ["short", "has a space in it!!", "ünïcödé-ünïcödé-x", ""] {
            let error = AdminToken::parse(weak).unwrap_err();
            assert!(
                !weak.is_empty() && !error.contains(weak) || weak.is_empty(),
                "{error}"
            );
        }
        let generated = AdminToken::generate();
        assert_eq!(generated.expose().len(), 64);
        assert!(AdminToken::parse(generated.expose()).is_ok());
        assert_ne!(generated.expose(), AdminToken::generate().expose());
        let token = AdminToken::parse(TOKEN).unwrap();
        assert_eq!(format!("{token:?}"), "AdminToken(***)");
        assert_eq!(token.expose(), TOKEN);
    }
}
