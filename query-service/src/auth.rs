//! Bearer-token authentication: constant-time comparison against every configured client's
//! token, then a check of the client's scopes against the route's.

use std::sync::Arc;

use axum::http::HeaderValue;
use subtle::ConstantTimeEq as _;

use crate::config::{Client, Scope};

/// The accepted clients; none means authentication is off.
#[derive(Debug, Clone, Default)]
pub(crate) struct Clients(Arc<Vec<Client>>);

impl Clients {
    pub(crate) fn new(clients: Vec<Client>) -> Self {
        Self(Arc::new(clients))
    }

    /// Whether authentication is on.
    pub(crate) fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// The client whose token `authorization` carries. Every token is compared, each in
    /// constant time, so timing tells nothing about which one was close.
    pub(crate) fn holder(&self, authorization: Option<&HeaderValue>) -> Option<&Client> {
        let presented = authorization.and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })?;
        let presented = presented.as_bytes();
        let mut found = None;
        for client in self.0.iter() {
            if bool::from(client.token.as_bytes().ct_eq(presented)) {
                found = Some(client);
            }
        }
        found
    }
}

impl Client {
    /// Whether this client may use a route that needs `scope`.
    pub(crate) fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str, token: &str, scopes: &[Scope]) -> Client {
        Client {
            name: name.into(),
            token: token.into(),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn only_a_configured_bearer_token_passes() {
        let clients = Clients::new(vec![
            client("grafana", "0123456789abcdef", &[Scope::Read]),
            client("token-1", "fedcba9876543210", &Scope::ALL),
        ]);
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(clients.enabled());
        let grafana = clients
            .holder(Some(&header("Bearer 0123456789abcdef")))
            .unwrap();
        assert_eq!(grafana.name, "grafana");
        assert!(grafana.may(Scope::Read) && !grafana.may(Scope::Export));
        let plain = clients
            .holder(Some(&header("bearer fedcba9876543210")))
            .unwrap();
        assert_eq!(plain.name, "token-1");
        assert!(Scope::ALL.iter().all(|&s| plain.may(s)));
        for bad in [
            "Bearer 0123456789abcdeF",
            "Bearer 0123456789abcde",
            "Bearer 0123456789abcdef0",
            "Basic 0123456789abcdef",
            "0123456789abcdef",
            "Bearer ",
        ] {
            assert!(clients.holder(Some(&header(bad))).is_none(), "{bad}");
        }
        assert!(clients.holder(None).is_none());
        assert!(!Clients::default().enabled());
    }
}
