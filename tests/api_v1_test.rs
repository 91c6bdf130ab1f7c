//! The REST API v1 end to end, with authentication on: registration and tokens, rooms,
//! members, messages with cursor pages across the cache/store seam, search, access rules (also
//! on the seed endpoints), and the OpenAPI description. On both back ends.

#[macro_use]
mod common;

use std::collections::BTreeSet;

use common::{Backend, TestServer, room, unique};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

on_both_backends!(
    registration_returns_a_token_that_identifies_the_alias,
    rooms_are_created_listed_shown_and_deleted_by_their_owner,
    members_join_leave_and_only_members_read_or_post,
    pages_by_sequence_number_meet_without_gap_or_overlap,
    search_finds_substrings_and_exact_texts,
    seed_endpoints_require_the_senders_own_token_when_auth_is_on,
    openapi_description_lists_every_endpoint,
    bad_bodies_and_paths_get_a_4xx_with_a_json_error,
);

/// One HTTP call: method, path, optional token, optional JSON body → status and JSON body.
async fn call(
    t: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, t.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, json)
}

async fn register(t: &TestServer, prefix: &str) -> (String, String) {
    let alias = unique(prefix);
    let (status, body) = call(
        t,
        Method::POST,
        "/api/v1/users",
        None,
        Some(json!({ "alias": alias })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (alias, body["token"].as_str().unwrap().to_string())
}

fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn registration_returns_a_token_that_identifies_the_alias(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let (ann, token) = register(&t, "ann").await;
    assert!(token.starts_with(&format!("{ann}.")));
    let (status, body) = call(
        &t,
        Method::POST,
        "/api/v1/users",
        None,
        Some(json!({ "alias": ann })),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "name_taken"));
    let (status, _) = call(&t, Method::GET, "/api/v1/rooms", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    for bad in [
        None,
        Some("nonsense"),
        Some(&format!("{ann}.wrongsecret") as &str),
    ] {
        let (status, body) = call(&t, Method::GET, "/api/v1/rooms", bad, None).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{bad:?}"
        );
    }
    // Only a hash of the token is stored; a restart still knows it.
    let mut t = t;
    t.restart().await;
    let (status, _) = call(&t, Method::GET, "/api/v1/rooms", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    t.cleanup().await;
}

async fn rooms_are_created_listed_shown_and_deleted_by_their_owner(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let (ann, ann_t) = register(&t, "ann").await;
    let (bob, bob_t) = register(&t, "bob").await;
    let (group, dm) = (room("grp"), room("dm"));
    let (status, meta) = call(
        &t,
        Method::POST,
        "/api/v1/rooms",
        Some(&ann_t),
        Some(json!({ "name": group, "group_room": true })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{meta}");
    assert_eq!(meta["owner_alias"], ann.as_str());
    let (status, meta) = call(
        &t,
        Method::POST,
        "/api/v1/rooms",
        Some(&bob_t),
        Some(json!({ "name": dm, "member": ann })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{meta}");
    assert_eq!(
        meta["members"],
        json!(
            [ann.clone(), bob.clone()]
                .into_iter()
                .collect::<BTreeSet<_>>()
        )
    );
    let (status, body) = call(
        &t,
        Method::POST,
        "/api/v1/rooms",
        Some(&bob_t),
        Some(json!({ "name": group, "group_room": true })),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "conflict"));

    let (_, mine) = call(&t, Method::GET, "/api/v1/rooms", Some(&ann_t), None).await;
    let names: BTreeSet<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from([group.as_str(), dm.as_str()]));
    let (_, bobs) = call(&t, Method::GET, "/api/v1/rooms", Some(&bob_t), None).await;
    assert_eq!(
        bobs.as_array().unwrap().len(),
        1,
        "bob is not in ann's group room"
    );

    let path = format!("/api/v1/rooms/{group}");
    let (status, _) = call(&t, Method::DELETE, &path, Some(&bob_t), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&t, Method::DELETE, &path, Some(&ann_t), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = call(&t, Method::GET, &path, Some(&ann_t), None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "room_not_found")
    );
    t.cleanup().await;
}

async fn members_join_leave_and_only_members_read_or_post(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let (ann, ann_t) = register(&t, "ann").await;
    let (bob, bob_t) = register(&t, "bob").await;
    let (_, eve_t) = register(&t, "eve").await;
    let r = room("club");
    call(
        &t,
        Method::POST,
        "/api/v1/rooms",
        Some(&ann_t),
        Some(json!({ "name": r, "group_room": true })),
    )
    .await;
    let messages = format!("/api/v1/rooms/{r}/messages");
    let (status, _) = call(
        &t,
        Method::POST,
        &messages,
        Some(&bob_t),
        Some(json!({ "message": "hi" })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not a member yet");
    let (status, _) = call(&t, Method::GET, &messages, Some(&bob_t), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let members = format!("/api/v1/rooms/{r}/members");
    let (status, meta) = call(
        &t,
        Method::POST,
        &members,
        Some(&bob_t),
        Some(json!({ "alias": bob })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{meta}");
    let (status, sent) = call(
        &t,
        Method::POST,
        &messages,
        Some(&bob_t),
        Some(json!({ "message": "hi all" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_eq!(sent["message"]["mess_props"]["from_user"], bob.as_str());
    assert_eq!(sent["message"]["mess_props"]["sequence_number"], 1);

    // eve may not remove others; the owner may not leave; a member may.
    let (status, _) = call(
        &t,
        Method::DELETE,
        &format!("{members}/{bob}"),
        Some(&eve_t),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = call(
        &t,
        Method::DELETE,
        &format!("{members}/{ann}"),
        Some(&ann_t),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "conflict"),
        "the owner cannot leave"
    );
    let (status, _) = call(
        &t,
        Method::DELETE,
        &format!("{members}/{bob}"),
        Some(&bob_t),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "a member may leave");
    let (status, _) = call(&t, Method::GET, &messages, Some(&bob_t), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "gone with the membership");
    t.cleanup().await;
}

async fn pages_by_sequence_number_meet_without_gap_or_overlap(backend: Backend) {
    let mut t = TestServer::start_authenticated(backend).await;
    let (_, ann_t) = register(&t, "ann").await;
    let r = room("pages");
    call(
        &t,
        Method::POST,
        "/api/v1/rooms",
        Some(&ann_t),
        Some(json!({ "name": r, "group_room": true })),
    )
    .await;
    let path = format!("/api/v1/rooms/{r}/messages");
    for i in 1..=23 {
        let (status, _) = call(
            &t,
            Method::POST,
            &path,
            Some(&ann_t),
            Some(json!({ "message": format!("m{i}") })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let numbers = |page: &Value| -> Vec<u64> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mess_props"]["sequence_number"].as_u64().unwrap())
            .collect()
    };
    for _ in 0..2 {
        // Backwards from the newest, 4 at a time (the cache holds 5): 23..20, 19..16, ...
        let (_, page) = call(
            &t,
            Method::GET,
            &format!("{path}?limit=4"),
            Some(&ann_t),
            None,
        )
        .await;
        let mut seen = numbers(&page);
        assert_eq!(seen, [20, 21, 22, 23]);
        let mut more = page["more"].as_bool().unwrap();
        while more {
            let before = seen[0];
            let (_, page) = call(
                &t,
                Method::GET,
                &format!("{path}?limit=4&before={before}"),
                Some(&ann_t),
                None,
            )
            .await;
            let mut older = numbers(&page);
            assert_eq!(*older.last().unwrap(), before - 1, "no gap at {before}");
            older.extend(seen);
            seen = older;
            more = page["more"].as_bool().unwrap();
        }
        assert_eq!(seen, (1..=23).collect::<Vec<_>>());
        // Forwards from the start, 7 at a time.
        let mut after = 0;
        let mut forward: Vec<u64> = Vec::new();
        loop {
            let (_, page) = call(
                &t,
                Method::GET,
                &format!("{path}?limit=7&after={after}"),
                Some(&ann_t),
                None,
            )
            .await;
            let got = numbers(&page);
            forward.extend(&got);
            after = *got.last().unwrap_or(&after);
            if !page["more"].as_bool().unwrap() {
                break;
            }
        }
        assert_eq!(forward, (1..=23).collect::<Vec<_>>());
        t.restart().await;
    }
    let (status, _) = call(
        &t,
        Method::GET,
        &format!("{path}?before=3&after=1"),
        Some(&ann_t),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    t.cleanup().await;
}

async fn search_finds_substrings_and_exact_texts(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let (_, ann_t) = register(&t, "ann").await;
    let r = room("find");
    call(
        &t,
        Method::POST,
        "/api/v1/rooms",
        Some(&ann_t),
        Some(json!({ "name": r, "group_room": true })),
    )
    .await;
    let path = format!("/api/v1/rooms/{r}/messages");
    for text in [
        "Hello world",
        "hello",
        "say HELLO again",
        "nothing here",
        "50% off (today)",
    ] {
        call(
            &t,
            Method::POST,
            &path,
            Some(&ann_t),
            Some(json!({ "message": text })),
        )
        .await;
    }
    let texts = |found: &Value| -> Vec<String> {
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message"].as_str().unwrap().to_string())
            .collect()
    };
    let search = format!("/api/v1/rooms/{r}/search");
    let (_, found) = call(
        &t,
        Method::GET,
        &format!("{search}?q=hello"),
        Some(&ann_t),
        None,
    )
    .await;
    assert_eq!(
        texts(&found),
        ["say HELLO again", "hello", "Hello world"],
        "newest first, any case"
    );
    let (_, found) = call(
        &t,
        Method::GET,
        &format!("{search}?q=hello&exact=true"),
        Some(&ann_t),
        None,
    )
    .await;
    assert_eq!(texts(&found), ["hello"]);
    let (_, found) = call(
        &t,
        Method::GET,
        &format!("{search}?q=%25%20off%20(t"),
        Some(&ann_t),
        None,
    )
    .await;
    assert_eq!(
        texts(&found),
        ["50% off (today)"],
        "regex characters are plain text"
    );
    let (status, _) = call(&t, Method::GET, &format!("{search}?q="), Some(&ann_t), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    t.cleanup().await;
}

async fn seed_endpoints_require_the_senders_own_token_when_auth_is_on(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let (ann, ann_t) = register(&t, "ann").await;
    let (_, bob_t) = register(&t, "bob").await;
    let r = room("seedauth");
    let send = format!("/send/?room_name={r}&message=hi&from_alias={ann}&group_room=true");
    let (status, _) = call(&t, Method::GET, &send, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&t, Method::GET, &send, Some(&bob_t), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "bob may not post as ann");
    let (status, _) = call(&t, Method::GET, &send, Some(&ann_t), None).await;
    assert_eq!(status, StatusCode::OK);
    let messages = format!("/messages/?room_name={r}");
    let (status, _) = call(&t, Method::GET, &messages, Some(&bob_t), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "bob is not a member");
    let (status, body) = call(&t, Method::GET, &messages, Some(&ann_t), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!(["hi"])));
    t.cleanup().await;
}

async fn openapi_description_lists_every_endpoint(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let (status, doc) = call(&t, Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for path in [
        "/api/v1/users",
        "/api/v1/rooms",
        "/api/v1/rooms/{room}",
        "/api/v1/rooms/{room}/members",
        "/api/v1/rooms/{room}/members/{alias}",
        "/api/v1/rooms/{room}/messages",
        "/api/v1/rooms/{room}/search",
    ] {
        assert!(paths.contains(path), "{path} missing from {paths:?}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    t.cleanup().await;
}

async fn bad_bodies_and_paths_get_a_4xx_with_a_json_error(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let (_, ann_t) = register(&t, "ann").await;
    let r = room("strict");
    call(
        &t,
        Method::POST,
        "/api/v1/rooms",
        Some(&ann_t),
        Some(json!({ "name": r, "group_room": true })),
    )
    .await;
    let cases: Vec<(Method, String, Option<Value>, u16)> = vec![
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(json!({ "alias": "amq.x" })),
            400,
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(json!({ "nope": 1 })),
            400,
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            Some(json!({ "name": "system.x", "group_room": true })),
            400,
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            Some(json!({ "name": unique("p") })),
            400,
        ),
        (Method::GET, "/api/v1/rooms/bad.name".into(), None, 400),
        (
            Method::GET,
            format!("/api/v1/rooms/{}", unique("none")),
            None,
            404,
        ),
        (
            Method::POST,
            format!("/api/v1/rooms/{r}/messages"),
            Some(json!({ "message": "" })),
            400,
        ),
        (
            Method::POST,
            format!("/api/v1/rooms/{r}/messages"),
            Some(json!({ "message": "x".repeat(16 * 1024 + 1) })),
            413,
        ),
        (
            Method::POST,
            format!("/api/v1/rooms/{r}/messages"),
            Some(json!({ "message": "x".repeat(70_000) })),
            413,
        ),
        (
            Method::GET,
            format!("/api/v1/rooms/{r}/messages?limit=0"),
            None,
            400,
        ),
        (
            Method::GET,
            format!("/api/v1/rooms/{r}/messages?before=abc"),
            None,
            400,
        ),
        (Method::PUT, format!("/api/v1/rooms/{r}"), None, 405),
    ];
    for (method, path, body, expected) in cases {
        let (status, json) = call(&t, method.clone(), &path, Some(&ann_t), body).await;
        assert_eq!(status.as_u16(), expected, "{method} {path}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{json}"
        );
    }
    // Not JSON at all.
    let response = reqwest::Client::new()
        .post(t.url("/api/v1/users"))
        .body("alias=ann")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    t.cleanup().await;
}
