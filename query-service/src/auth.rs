//! Bearer-token authentication: constant-time comparison against every configured token.

use std::sync::Arc;

use axum::http::HeaderValue;
use subtle::ConstantTimeEq as _;

/// The accepted tokens; empty means authentication is off.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tokens(Arc<Vec<Vec<u8>>>);

impl Tokens {
    pub(crate) fn new(tokens: Vec<String>) -> Self {
        Self(Arc::new(
            tokens.into_iter().map(String::into_bytes).collect(),
        ))
    }

    /// Whether authentication is on.
    pub(crate) fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// The name of the accepted token `authorization` carries (`token-<n>`, by its place in
    /// the configuration; the access log names callers by it, never by the token). Every
    /// token is compared, each in constant time, so timing tells nothing about which one
    /// was close.
    pub(crate) fn holder(&self, authorization: Option<&HeaderValue>) -> Option<String> {
        let presented = authorization.and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })?;
        let presented = presented.as_bytes();
        let mut found = None;
        for (i, token) in self.0.iter().enumerate() {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(i);
            }
        }
        found.map(|i| format!("token-{}", i + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_bearer_token_passes() {
        let tokens = Tokens::new(vec!["0123456789abcdef".into(), "fedcba9876543210".into()]);
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(tokens.enabled());
        assert_eq!(
            tokens.holder(Some(&header("Bearer 0123456789abcdef"))),
            Some("token-1".into())
        );
        assert_eq!(
            tokens.holder(Some(&header("bearer fedcba9876543210"))),
            Some("token-2".into())
        );
        for bad in [
            "Bearer 0123456789abcdeF",
            "Bearer 0123456789abcde",
            "Bearer 0123456789abcdef0",
            "Basic 0123456789abcdef",
            "0123456789abcdef",
            "Bearer ",
        ] {
            assert_eq!(tokens.holder(Some(&header(bad))), None, "{bad}");
        }
        assert_eq!(tokens.holder(None), None);
        assert!(!Tokens::default().enabled());
    }
}
