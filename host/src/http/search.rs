//! `_search`: `GET <realm>/_search?<bracket syntax>`, `QUERY` with a JSON
//! body, or `POST` with `X-HTTP-Method-Override: QUERY` — one query
//! language (see `search::query`), answered as Boxel does: the matching
//! cards as their card GET would serve them, the cards they link to in
//! `included`, and `meta.page.total`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};
use url::Url;

use super::app::App;
use super::files::set_cache_control;
use super::included::{cards, side_load};
use super::realm_meta::realm_info;
use super::resolve::Target;
use super::responses::{error, json_response, storage_error, Reply, CARD_JSON};
use crate::guest::runtime::Guest;
use crate::search::{self, brackets, InvalidQuery, SearchError};

/// The GET form: the query string in bracket syntax.
pub(super) async fn get(app: &App, guest: &Arc<Guest>, target: &Target, query_string: &str) -> Reply {
    let query = brackets::parse(query_string).map_err(|e| invalid(&e))?;
    answer(app, guest, target, &query).await
}

/// The QUERY form: the query as a JSON body.
pub(super) async fn query(app: &App, guest: &Arc<Guest>, target: &Target, body: &str) -> Reply {
    let query: Value = serde_json::from_str(body).map_err(|e| invalid(&InvalidQuery(format!("the body is not JSON: {e}"))))?;
    answer(app, guest, target, &query).await
}

fn invalid(e: &InvalidQuery) -> Response {
    error(StatusCode::BAD_REQUEST, &format!("Invalid query: {e}"))
}

async fn answer(app: &App, guest: &Arc<Guest>, target: &Target, query: &Value) -> Reply {
    let realm = &target.realm;
    let realm_url = Url::parse(realm).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &format!("realm URL {realm}: {e}")))?;
    let limits = app.limits.search;
    let query = search::query::parse(query, &realm_url, limits.query).map_err(|e| invalid(&e))?;
    let hits = search::search(&app.db, realm, &query, limits.timeout).await.map_err(|e| match e {
        SearchError::TooSlow(_) => invalid(&InvalidQuery(e.to_string())),
        SearchError::Storage(e) => storage_error(&e),
    })?;
    let paths: Vec<String> = hits.cards.iter().map(|(path, _)| path.clone()).collect();
    let prefetched: HashMap<_, _> = hits.cards.into_iter().collect();
    let mut data = cards(guest, realm, paths, prefetched).await?;
    let info = Value::Object(realm_info(app, realm).await?);
    for card in &mut data {
        if let Some(meta) = card.pointer_mut("/meta").and_then(Value::as_object_mut) {
            meta.insert("realmInfo".into(), info.clone());
        }
    }
    let included = side_load(app, guest, realm, &data, &info).await?;
    let mut doc = json!({"data": data, "meta": {"page": {"total": hits.total}}});
    if !included.is_empty() {
        doc["included"] = Value::Array(included);
    }
    let mut response = json_response(StatusCode::OK, CARD_JSON, &doc);
    set_cache_control(response.headers_mut(), target);
    Ok(response)
}
