//! A file that is not a card, asked for as one (`GET notes.txt` with
//! `application/vnd.card+json`): Boxel answers a `file-meta` document — the
//! file's name, URL, content type, size, hash and times, typed by the
//! `FileDef` of its extension — rather than an error.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::app::App;
use super::file_types::{content_type, file_def};
use super::realm_meta::realm_info;
use super::resolve::Target;
use super::responses::{storage_error, text_response, CARD_JSON};
use super::files::set_file_headers;
use crate::store::etag_of;

/// The `file-meta` document of the file at the target's path, if one exists.
pub(super) async fn document(app: &App, target: &Target) -> Result<Option<Response>, Response> {
    let (realm, local) = (&target.realm, &target.local);
    let Some(file) = app.db.read_file(realm, local).await.map_err(|e| storage_error(&e))? else {
        return Ok(None);
    };
    let url = format!("{realm}{local}");
    let name = local.rsplit('/').next().unwrap_or(local);
    let (module, def) = file_def(name);
    let doc = json!({"data": {
        "type": "file-meta",
        "id": url,
        "attributes": {
            "name": name,
            "url": url,
            "sourceUrl": url,
            "contentType": content_type(name),
            "contentHash": file.content_hash,
            "contentSize": file.size(),
            "lastModified": file.last_modified,
            "createdAt": file.created,
        },
        "meta": {
            "adoptsFrom": {"module": module, "name": def},
            "realmInfo": realm_info(app, realm).await?,
            "realmURL": realm,
        },
        "links": {"self": url},
    }});
    let mut response = text_response(StatusCode::OK, CARD_JSON, doc.to_string());
    set_file_headers(response.headers_mut(), &etag_of(&file.content_hash), file.created, file.last_modified);
    Ok(Some(response))
}
