//! The operator terminal at `/`: one HTML page, a script, a stylesheet and the message
//! catalogs (`i18n/en.json`, `i18n/de.json`), compiled into the binary. No CDN, no build step,
//! nothing fetched from the internet: the floor keeps working with the WAN down.
//!
//! The page and its assets are open (the login screen must load); everything they call under
//! `/api/v1` needs the badge session (see [`super::session`]).

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use service_kit::static_page::{self, Page, asset};

const INDEX: &str = include_str!("../../assets/terminal/index.html");
const SCRIPT: &str = include_str!("../../assets/terminal/app.js");
const STYLE: &str = include_str!("../../assets/terminal/app.css");

/// The message catalogs: a translation is one more file here and one line in this list.
pub const CATALOGS: &[(&str, &str)] = &[
    ("en", include_str!("../../assets/terminal/i18n/en.json")),
    ("de", include_str!("../../assets/terminal/i18n/de.json")),
];

async fn catalog(Path(file): Path<String>) -> Response {
    let lang = file.strip_suffix(".json").unwrap_or("");
    match CATALOGS.iter().find(|(l, _)| *l == lang) {
        Some((_, text)) => asset("application/json; charset=utf-8", text),
        None => super::error::ApiError::not_found(format!(
            "no catalog {file:?}; available: {}",
            CATALOGS
                .iter()
                .map(|(l, _)| *l)
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into_response(),
    }
}

/// `GET /`, `/assets/app.js`, `/assets/app.css` (the shared page headers of
/// [`service_kit::static_page`]), `/assets/i18n/{lang}.json`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    static_page::router(Page {
        index: INDEX,
        script: SCRIPT,
        style: STYLE,
    })
    .route("/assets/i18n/{file}", get(catalog))
    .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn keys(text: &str) -> BTreeSet<String> {
        let v: serde_json::Value = serde_json::from_str(text).expect("catalog is JSON");
        v.as_object()
            .expect("catalog is an object")
            .keys()
            .cloned()
            .collect()
    }

    /// Keys the page uses: `t("key"` in the script, `data-i18n="key"` in the page, and the
    /// state and error names the script builds keys from.
    fn used() -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (text, open) in [(SCRIPT, "t(\""), (INDEX, "data-i18n=\"")] {
            let mut rest = text;
            while let Some(i) = rest.find(open) {
                let before = text.len() - rest.len() + i;
                rest = &rest[i + open.len()..];
                // `t(` must be the function, not the end of another name (`button(`).
                if open == "t(\""
                    && text[..before]
                        .chars()
                        .last()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
                {
                    continue;
                }
                let end = rest.find('"').expect("closing quote");
                let key = &rest[..end];
                // Prefixes completed at run time ("state." + name) are checked below.
                if !key.ends_with('.') {
                    out.insert(key.to_owned());
                }
            }
        }
        for s in shared_model::work_order::WorkOrderState::ALL {
            out.insert(format!("wo.{}", s.as_str()));
        }
        for s in shared_model::event::MachineState::ALL {
            out.insert(format!("state.{}", s.as_str()));
        }
        out
    }

    #[test]
    fn every_catalog_has_every_key_the_page_uses_and_no_other() {
        let used = used();
        assert!(used.len() > 80, "too few keys found: {used:?}");
        let english = keys(CATALOGS[0].1);
        for (lang, text) in CATALOGS {
            let k = keys(text);
            let missing: Vec<_> = used.difference(&k).collect();
            assert!(missing.is_empty(), "{lang}.json lacks {missing:?}");
            // Error texts (err.*) are looked up by the code the API answers with.
            let unused: Vec<_> = k
                .difference(&used)
                .filter(|x| !x.starts_with("err."))
                .collect();
            assert!(unused.is_empty(), "{lang}.json has unused keys {unused:?}");
            assert_eq!(k, english, "{lang}.json and en.json differ in keys");
        }
    }

    #[test]
    fn placeholders_match_across_languages() {
        let en: serde_json::Value = serde_json::from_str(CATALOGS[0].1).unwrap();
        let names = |s: &str| -> BTreeSet<String> {
            s.split('{')
                .skip(1)
                .filter_map(|p| p.split_once('}').map(|(n, _)| n.to_owned()))
                .collect()
        };
        for (lang, text) in CATALOGS {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            for (k, e) in en.as_object().unwrap() {
                let other = v[k].as_str().unwrap_or("");
                assert_eq!(
                    names(e.as_str().unwrap()),
                    names(other),
                    "{lang}.json {k}: placeholders differ"
                );
            }
        }
    }
}
