//! The realm event a write request appends to the outbox (`realm_events`):
//! built when the request commits its writes to the batch, written by the
//! batch's flush in the same transaction, so it commits with the writes or
//! not at all. On Postgres the flush also queues a NOTIFY, delivered only
//! if the transaction commits.

use serde_json::json;

/// The channel a committed event is announced on (payload: the realm URL).
pub const EVENTS_CHANNEL: &str = "realm_events";

/// What a write request changed, for its event.
#[derive(Default)]
pub struct Changes {
    /// The changed URLs in write order, each once.
    urls: Vec<String>,
}

impl Changes {
    /// Notes a changed file; a card file counts as its card URL.
    pub fn note(&mut self, realm: &str, path: &str, is_card: bool) {
        let local = if is_card { path.strip_suffix(".json").unwrap_or(path) } else { path };
        let url = format!("{realm}{local}");
        if !self.urls.contains(&url) {
            self.urls.push(url);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Boxel's realm-event shape.
    pub fn payload(&self, realm: &str, client_request_id: Option<&str>) -> String {
        json!({
            "eventName": "index",
            "indexType": "incremental",
            "invalidations": self.urls,
            "clientRequestId": client_request_id,
            "realmURL": realm,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::Changes;

    #[test]
    fn cards_count_as_their_url_and_each_change_once() {
        let mut changes = Changes::default();
        changes.note("http://h/r/", "Person/1.json", true);
        changes.note("http://h/r/", "person.gts", false);
        changes.note("http://h/r/", "Person/1.json", true);
        changes.note("http://h/r/", "config.json", false);
        let payload: serde_json::Value = serde_json::from_str(&changes.payload("http://h/r/", Some("c1"))).unwrap();
        assert_eq!(payload, serde_json::json!({
            "eventName": "index", "indexType": "incremental",
            "invalidations": ["http://h/r/Person/1", "http://h/r/person.gts", "http://h/r/config.json"],
            "clientRequestId": "c1", "realmURL": "http://h/r/",
        }));
    }
}
