//! The console's static files, compiled into the binary and served with a content hash in their
//! URL (so they can be cached for good and never go stale). No CDN, no runtime download.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// One compiled-in file.
pub struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static str,
    hash: LazyLock<String>,
}

impl Asset {
    /// Its URL, with the content hash.
    pub fn url(&self) -> String {
        format!("/ui/assets/{}?v={}", self.name, &*self.hash)
    }
}

macro_rules! asset {
    ($name:literal, $mime:literal) => {
        Asset {
            name: $name,
            mime: $mime,
            body: include_str!(concat!("assets/", $name)),
            hash: LazyLock::new(|| {
                hex::encode(&Sha256::digest(include_str!(concat!("assets/", $name)))[..8])
            }),
        }
    };
}

/// The stylesheet.
pub static CSS: Asset = asset!("console.css", "text/css; charset=utf-8");
/// The script.
pub static JS: Asset = asset!("console.js", "text/javascript; charset=utf-8");

/// `GET /ui/assets/{name}`.
pub async fn serve(Path(name): Path<String>) -> Response {
    match [&CSS, &JS].into_iter().find(|a| a.name == name) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.mime),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
