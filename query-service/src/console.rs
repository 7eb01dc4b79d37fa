//! The web console: the page and its content-hashed assets, built from `console/` and
//! compiled into the binary by `build.rs`. They are open routes (the page holds no data; it
//! asks the API, with the tab's token, for everything it shows).

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// `(URL path, content type, bytes)` of every file of `console/dist`; `/` is `index.html`.
pub(crate) const ASSETS: &[(&str, &str, &[u8])] =
    include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// The page may load only from this origin, talk only to it, and show pictures it fetched
/// itself (blob URLs); nothing may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; \
     connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn file(path: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, kind, bytes)| (*kind, *bytes))
}

/// `GET /`: the console's page, revalidated on every load (it names the current assets).
pub(crate) fn page() -> Response {
    let (kind, bytes) = file("/").expect("build.rs refuses a console without index.html");
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        bytes,
    )
        .into_response()
}

/// `GET /assets/{file}`: a script or stylesheet; its name carries its content's hash, so a
/// browser keeps it for good. `None` for a name the console does not have.
pub(crate) fn asset(name: &str) -> Option<Response> {
    let (kind, bytes) = file(&format!("/assets/{name}"))?;
    Some(
        (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_every_asset_it_names_are_built_in() {
        let (kind, page) = file("/").expect("index.html");
        assert!(kind.starts_with("text/html"));
        let page = std::str::from_utf8(page).expect("UTF-8");
        let named: Vec<&str> = page
            .split('"')
            .filter(|part| part.starts_with("/assets/"))
            .collect();
        assert!(
            named.iter().any(|p| p.ends_with(".js")),
            "the page loads a script: {page}"
        );
        for path in named {
            assert!(
                file(path).is_some(),
                "{path} is named by the page but not built in"
            );
        }
    }
}
