//! The dashboard at `/ui/`: five static files (page, two scripts, style,
//! icon) embedded in the binary (no CDN, no build step). The page calls the
//! same `/v1/` routes with the user's token, so it can do exactly what that
//! token may.
//!
//! It shows user data (payloads, results, errors), so it puts every value
//! in the page as text, never as HTML, and the CSP below forbids inline
//! scripts and styles, other origins, and framing.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue};

/// One embedded file.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The icon, at `/ui/favicon.svg` and at `/favicon.ico` (where browsers
/// look without a `<link>`; an SVG there is fine for them).
pub const FAVICON: Asset = Asset {
    name: "favicon.svg",
    content_type: "image/svg+xml",
    body: include_str!("ui/favicon.svg"),
};

const ASSETS: &[Asset] = &[
    FAVICON,
    Asset {
        name: "",
        content_type: "text/html; charset=utf-8",
        body: include_str!("ui/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/app.js"),
    },
    Asset {
        name: "graph.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/graph.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("ui/app.css"),
    },
];

/// The page's content security policy: its own files only, no inline
/// script or style, no frames, no plugins; calls go to this origin only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The file at `/ui/{name}` (`""` and `index.html` are the page).
pub fn asset(name: &str) -> Option<&'static Asset> {
    let name = if name == "index.html" { "" } else { name };
    ASSETS.iter().find(|a| a.name == name)
}

pub fn response(asset: &'static Asset) -> Response {
    let mut res = asset.body.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Small, and replaced with the binary: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
