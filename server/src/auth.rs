//! Who is calling. Without a tokens file the coordinator is open: the tenant comes from
//! `x-tenant-id` and every caller may do everything. With `--tokens FILE`, every call to the
//! job, admin and worker services needs `authorization: Bearer <token>`; the token names the
//! tenant (and a role), a tenant sees only its own jobs, admin RPCs need the admin role, and
//! worker streams need the worker (or admin) role. A reader sees (its tenant's, or with `*`
//! everything) and changes nothing: the web console's read-only operators. Health and
//! reflection stay open, for load balancers and tools. The web console (`console/`) takes the
//! same tokens.

use std::{
    collections::HashMap,
    future::Future,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{Request, Status, body::Body, codegen::http};
use tower::{Layer, Service};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Submit, see, wait on and cancel its tenant's jobs.
    Client,
    /// That, and connect as a worker.
    Worker,
    /// Everything, for every tenant.
    Admin,
    /// Sees, changes nothing: its tenant's jobs, or (tenant `*`) everything an admin sees.
    Reader,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }
}

/// The caller of a request, put in its extensions by [`AuthLayer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The tenant whose jobs and quotas apply; `None` for an admin acting for everyone.
    pub tenant: Option<String>,
    pub role: Role,
    /// Whether the tenant is vouched for by a token (then callers cannot pick another).
    pub authenticated: bool,
}

impl Identity {
    /// Of a request that went through [`AuthLayer`]; an open coordinator's identity otherwise.
    pub fn of<T>(request: &Request<T>) -> Identity {
        request
            .extensions()
            .get::<Identity>()
            .cloned()
            .unwrap_or(Identity {
                tenant: None,
                role: Role::Admin,
                authenticated: false,
            })
    }

    /// Whether this caller may see a job or group of `tenant`.
    pub fn may_see(&self, tenant: &str) -> bool {
        self.sees_all() || self.role == Role::Admin || self.tenant.as_deref() == Some(tenant)
    }

    /// Whether this caller sees every tenant's jobs and the coordinator's own numbers: an open
    /// coordinator's, an admin's or an all-tenants reader's (only those have no tenant).
    pub fn sees_all(&self) -> bool {
        !self.authenticated || self.tenant.is_none()
    }

    /// `Client`: may change its tenant's jobs (every role but the reader); `Reader`: may see
    /// what admin reads show (readers and admins); `Worker` and `Admin`: those roles (an admin
    /// may do everything).
    pub fn require(&self, role: Role) -> Result<(), Status> {
        let allowed = match role {
            Role::Client => self.role != Role::Reader,
            Role::Reader => matches!(self.role, Role::Reader | Role::Admin),
            Role::Worker => matches!(self.role, Role::Worker | Role::Admin),
            Role::Admin => self.role == Role::Admin,
        };
        if allowed || !self.authenticated {
            Ok(())
        } else if role == Role::Client {
            Err(Status::permission_denied(
                "a reader's token changes nothing",
            ))
        } else {
            Err(Status::permission_denied(format!(
                "this call needs the {} role",
                role.as_str()
            )))
        }
    }
}

/// Token → who it is.
#[derive(Debug, Default)]
pub struct Tokens(HashMap<String, Identity>);

impl Tokens {
    /// Reads a tokens file: one `TOKEN TENANT [client|worker|admin|reader]` per line; `#`
    /// starts a comment. The tenant `*` with the admin role acts for every tenant; with the
    /// reader role it sees every tenant's jobs.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("tokens file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (token, tenant, role) = match fields[..] {
                [token, tenant] => (token, tenant, Role::Client),
                [token, tenant, role] => (
                    token,
                    tenant,
                    match role {
                        "client" => Role::Client,
                        "worker" => Role::Worker,
                        "admin" => Role::Admin,
                        "reader" => Role::Reader,
                        other => {
                            return Err(format!(
                                "line {}: role {other:?} is not client, worker, admin or reader",
                                n + 1
                            ));
                        }
                    },
                ),
                _ => return Err(format!("line {}: expected TOKEN TENANT [ROLE]", n + 1)),
            };
            if token.len() < 8 {
                return Err(format!(
                    "line {}: a token must be at least 8 characters",
                    n + 1
                ));
            }
            let tenant = if tenant == "*" && matches!(role, Role::Admin | Role::Reader) {
                None
            } else {
                crate::api::validate::name("tenant", tenant)
                    .map_err(|e| format!("line {}: {e}", n + 1))?;
                Some(tenant.to_owned())
            };
            let identity = Identity {
                tenant,
                role,
                authenticated: true,
            };
            if tokens.insert(token.to_owned(), identity).is_some() {
                return Err(format!("line {}: the token is listed twice", n + 1));
            }
        }
        Ok(Tokens(tokens))
    }
}

impl Tokens {
    /// Who the `authorization` header names.
    fn identify(&self, headers: &http::HeaderMap) -> Result<Identity, Status> {
        let token = bearer(headers)
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        self.token(token)
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// Who a token is, if it is one of the file's.
    pub fn token(&self, token: &str) -> Option<Identity> {
        self.0.get(token.trim()).cloned()
    }
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The tower layer that checks tokens on every service but health and reflection, and puts
/// the caller's [`Identity`] in the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    pub fn new(tokens: Option<Arc<Tokens>>) -> AuthLayer {
        AuthLayer { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

/// Switchyard's own services; health and reflection stay open for load balancers and tools.
fn guarded(path: &str) -> bool {
    path.starts_with("/switchyard.")
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(tokens) = &self.tokens
            && guarded(request.uri().path())
        {
            match tokens.identify(request.headers()) {
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                }
                Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_files() {
        let tokens = Tokens::parse(
            "# comment\nsecret-a1 acme\nsecret-w1 acme worker\nsecret-root * admin # all\n",
        )
        .expect("valid");
        assert_eq!(tokens.0["secret-a1"].tenant.as_deref(), Some("acme"));
        assert_eq!(tokens.0["secret-w1"].role, Role::Worker);
        assert_eq!(tokens.0["secret-root"].tenant, None);
        assert!(Tokens::parse("short acme").is_err());
        assert!(Tokens::parse("secret-a1 acme boss").is_err());
        assert!(Tokens::parse("secret-a1 acme\nsecret-a1 other").is_err());
        assert!(
            Tokens::parse("secret-a1 * client").is_err(),
            "only an admin acts for all"
        );
        let readers = Tokens::parse("secret-r1 * reader\nsecret-r2 acme reader").expect("valid");
        let all = &readers.0["secret-r1"];
        assert_eq!((all.role, all.tenant.as_deref()), (Role::Reader, None));
        assert!(all.sees_all() && all.may_see("acme"));
        assert!(all.require(Role::Reader).is_ok());
        assert!(
            all.require(Role::Client).is_err(),
            "a reader changes nothing"
        );
        assert!(all.require(Role::Admin).is_err());
        let acme = &readers.0["secret-r2"];
        assert!(!acme.sees_all() && acme.may_see("acme") && !acme.may_see("other"));
    }
}
