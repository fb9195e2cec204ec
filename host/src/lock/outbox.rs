//! The realm event a write request appends to the outbox (`realm_events`)
//! in its own savepoint, so it commits with the writes or not at all; on
//! Postgres the same statement queues a NOTIFY, which is delivered only
//! if the transaction commits.

use serde_json::json;

/// The channel a committed event is announced on (payload: the realm URL).
pub const EVENTS_CHANNEL: &str = "realm_events";

/// What a write request changed, for its event.
#[derive(Default)]
pub(super) struct Changes {
    /// The changed URLs in write order, each once.
    urls: Vec<String>,
}

impl Changes {
    /// Notes a changed file; a card file counts as its card URL.
    pub(super) fn note(&mut self, realm: &str, path: &str, is_card: bool) {
        let local = if is_card { path.strip_suffix(".json").unwrap_or(path) } else { path };
        let url = format!("{realm}{local}");
        if !self.urls.contains(&url) {
            self.urls.push(url);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Boxel's realm-event shape.
    pub(super) fn payload(&self, realm: &str, client_request_id: Option<&str>) -> String {
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

/// Appends the event (`$1` realm, `$2` payload, `$3` now): the next
/// sequence number under the realm's lock.
pub(super) const APPEND_SQLITE: &str = "INSERT INTO realm_events (realm_url, seq, payload, created_at)
    SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3 FROM realm_events WHERE realm_url = $1 RETURNING seq";

/// The same, plus pruning (as [`PRUNE_COUNT_SQLITE`] and
/// [`PRUNE_AGE_SQLITE`], `$4` count, `$5` cutoff) and the NOTIFY (payload:
/// the realm and the seq), in one round trip. Both prunes read a bounded
/// range of the primary key, however many events the realm keeps.
pub(super) const APPEND_POSTGRES: &str = "WITH appended AS (
        INSERT INTO realm_events (realm_url, seq, payload, created_at)
        SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3 FROM realm_events WHERE realm_url = $1 RETURNING seq
    ), by_count AS (
        DELETE FROM realm_events WHERE realm_url = $1 AND seq <= (SELECT seq FROM appended) - $4
    ), by_age AS (
        DELETE FROM realm_events WHERE realm_url = $1 AND created_at < $5 AND seq < (SELECT seq FROM appended)
            AND seq IN (SELECT e.seq FROM realm_events e WHERE e.realm_url = $1 ORDER BY e.seq LIMIT 100)
    )
    SELECT seq, pg_notify('realm_events', $1 || ' ' || seq) FROM appended";

/// Drops a realm's events past the retained count (`$1` realm, `$2` the
/// newest seq, `$3` how many to keep): a range of the primary key.
pub(super) const PRUNE_COUNT_SQLITE: &str = "DELETE FROM realm_events WHERE realm_url = $1 AND seq <= $2 - $3";

/// Drops up to 100 of a realm's oldest events older than the cutoff, never
/// the newest (`$1` realm, `$2` the newest seq, `$4` the cutoff): each
/// write trims the old end a little, reading at most 100 rows.
pub(super) const PRUNE_AGE_SQLITE: &str = "DELETE FROM realm_events WHERE realm_url = $1 AND created_at < $4 AND seq < $2
    AND seq IN (SELECT e.seq FROM realm_events e WHERE e.realm_url = $1 ORDER BY e.seq LIMIT 100)";

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
