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

    /// Whether `authorization` carries an accepted `Bearer` token. Every token is compared,
    /// each in constant time, so timing tells nothing about which one was close.
    pub(crate) fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(presented) = authorization.and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }) else {
            return false;
        };
        let presented = presented.as_bytes();
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |any, token| {
                any | token.as_slice().ct_eq(presented)
            })
            .into()
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
        assert!(tokens.allows(Some(&header("Bearer 0123456789abcdef"))));
        assert!(tokens.allows(Some(&header("bearer fedcba9876543210"))));
        for bad in [
            "Bearer 0123456789abcdeF",
            "Bearer 0123456789abcde",
            "Bearer 0123456789abcdef0",
            "Basic 0123456789abcdef",
            "0123456789abcdef",
            "Bearer ",
        ] {
            assert!(!tokens.allows(Some(&header(bad))), "{bad}");
        }
        assert!(!tokens.allows(None));
        assert!(!Tokens::default().enabled());
    }
}
