//! The card documents every benchmark uses, so the HTTP, SQL and guest
//! figures all move cards of the same size and shape.

use serde_json::{json, Value};

/// A Person card resource (the `data` of a request) whose JSON is about
/// `bytes` long: a few fields, a text, and a list of entries.
pub fn person_resource(bytes: usize, module: &str) -> Value {
    let mut resource = json!({
        "type": "card",
        "attributes": {
            "firstName": "Mango",
            "lastName": "Dog",
            "bio": "A very good dog who likes long walks and benchmarks.",
            "tags": ["dog", "good", "bench"],
            "counter": 0,
            "entries": []
        },
        "relationships": {
            "friend": {"links": {"self": "../Person/friend"}}
        },
        "meta": {"adoptsFrom": {"module": module, "name": "Person"}}
    });
    let mut len = resource.to_string().len();
    let mut i = 0;
    while len < bytes {
        let entry = json!({"n": i, "title": format!("entry {i}"), "text": "lorem ipsum dolor sit amet consectetur"});
        // The entry and the comma before it (none before the first).
        len += entry.to_string().len() + usize::from(i > 0);
        if let Some(Value::Array(entries)) = resource.pointer_mut("/attributes/entries") {
            entries.push(entry);
        }
        i += 1;
    }
    resource
}

/// A PATCH `data` with attributes no other request sends.
pub fn patch_data(client: usize, n: u64, module: &str) -> Value {
    json!({
        "attributes": {"counter": n, "note": format!("client {client} request {n}")},
        "meta": {"adoptsFrom": {"module": module, "name": "Person"}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_close_to_the_request() {
        for size in [1024, 100 * 1024] {
            let len = person_resource(size, "./person").to_string().len();
            assert!(len >= size && len < size + 200, "{size} → {len}");
        }
    }
}
