//! Concurrent writers (spec §2 "inside the realm write lock", §5): many
//! PATCHes of one card all land, racing `/_atomic` adds of one href yield
//! exactly one 201 and one 409, concurrent creates get distinct ids.
//! Requests are released together by a barrier; nothing sleeps.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::join_all;
use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::harness::*;

const CLIENTS: usize = 16;
const PATCHES_PER_CLIENT: usize = 25;
const RACE_ROUNDS: usize = 20;

/// Runs `work(i, client)` for `count` clients, each with its own connection
/// pool, all released at once by a barrier; returns their results in order.
async fn together<T, F, Fut>(count: usize, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Client) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(count));
    let tasks = (0..count).map(|i| {
        let barrier = barrier.clone();
        let job = work(i, Client::new());
        tokio::spawn(async move {
            barrier.wait().await;
            job.await
        })
    });
    join_all(tasks).await.into_iter().map(|joined| joined.expect("task panicked")).collect()
}

async fn concurrent_patches_of_distinct_attributes_all_land(backend: Backend) {
    let srv = backend.start().await;
    let realm = srv.realm("test");
    let (id, _) = srv.client().create(&realm, &person_doc(&realm, json!({ "firstName": "Counter" }))).await;

    let responses = together(CLIENTS, |client_no, http| {
        let (id, realm) = (id.clone(), realm.clone());
        async move {
            let patches = (0..PATCHES_PER_CLIENT).map(|i| {
                let doc = person_doc(&realm, json!({ format!("a_{client_no}_{i}"): i }));
                let request = http.patch_card(&id, &doc);
                async move { request.fetch().await }
            });
            join_all(patches).await
        }
    })
    .await;

    let mut etags = HashSet::new();
    for resp in responses.iter().flatten() {
        assert_eq!(resp.status, 200, "every PATCH succeeds:\n{resp}");
        etags.insert(resp.etag());
    }
    assert_eq!(etags.len(), CLIENTS * PATCHES_PER_CLIENT, "every PATCH is a real change with its own etag");

    let got = srv.client().get_card(&id).fetch().await.expect_status(200);
    let attributes = got.json()["data"]["attributes"].clone();
    assert_eq!(attributes["firstName"], json!("Counter"));
    let mut missing = Vec::new();
    for client_no in 0..CLIENTS {
        for i in 0..PATCHES_PER_CLIENT {
            let key = format!("a_{client_no}_{i}");
            if attributes[&key] != json!(i) {
                missing.push(key);
            }
        }
    }
    assert!(missing.is_empty(), "{} of {} PATCHes were lost, e.g. {:?}", missing.len(), CLIENTS * PATCHES_PER_CLIENT, &missing[..missing.len().min(10)]);
    let stored: Value = serde_json::from_str(&srv.client().read(&format!("{id}.json")).await).expect("stored JSON");
    let stored_count = stored["data"]["attributes"].as_object().map_or(0, |a| a.len());
    assert_eq!(stored_count, 1 + CLIENTS * PATCHES_PER_CLIENT, "the stored file has every attribute");
}

async fn racing_atomic_adds_of_one_href_let_exactly_one_win(backend: Backend) {
    let srv = backend.start().await;
    let realm = srv.realm("test");
    let contenders = ["AddA", "AddB"];
    for round in 0..RACE_ROUNDS {
        let href = format!("race-{round}.json");
        let statuses: Vec<(u16, &str)> = together(contenders.len(), |i, http| {
            let body = json!({ "atomic:operations": [{
                "op": "add",
                "href": href,
                "data": card_resource(&format!("{realm}person"), "Person", Some(json!({ "firstName": contenders[i] })), None),
            }]});
            let request = http.atomic(&realm, &body);
            async move {
                let resp = request.fetch().await;
                if resp.status == 409 {
                    assert_eq!(resp.atomic_errors(409)[0]["title"], json!("Resource already exists"));
                }
                (resp.status, contenders[i])
            }
        })
        .await;

        let mut sorted: Vec<u16> = statuses.iter().map(|(status, _)| *status).collect();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![201, 409], "round {round}: exactly one add wins ({statuses:?})");
        let winner = statuses.iter().find(|(status, _)| *status == 201).map(|(_, name)| *name).expect("a winner");
        let card = srv.client().get_card(&format!("{realm}race-{round}")).fetch().await.expect_status(200);
        assert_eq!(card.json()["data"]["attributes"]["firstName"], json!(winner), "round {round}: the winner's card is served");
        let stored: Value = serde_json::from_str(&srv.client().read(&format!("{realm}{href}")).await).expect("stored JSON");
        assert_eq!(stored["data"]["attributes"]["firstName"], json!(winner), "round {round}: the winner's content is stored");
    }
}

async fn concurrent_creates_get_distinct_ids(backend: Backend) {
    let srv = backend.start().await;
    let realm = srv.realm("test");
    let ids = together(32, |i, http| {
        let request = http.create_card(&realm, &person_doc(&realm, json!({ "n": i })));
        async move { request.fetch().await.expect_status(201).json()["data"]["id"].as_str().expect("data.id").to_string() }
    })
    .await;
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "every create gets its own id");
    for (i, id) in ids.iter().enumerate() {
        let card = srv.client().get_card(id).fetch().await.expect_status(200);
        assert_eq!(card.json()["data"]["attributes"]["n"], json!(i));
    }
}

on_both_backends!(
    concurrent_patches_of_distinct_attributes_all_land,
    racing_atomic_adds_of_one_href_let_exactly_one_win,
    concurrent_creates_get_distinct_ids,
);
