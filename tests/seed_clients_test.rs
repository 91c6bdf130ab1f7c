//! The seed's endpoints as the course's own client template and other students' clients call
//! them: `POST /send/` (with or without the slash; parameters in the query, a form or JSON),
//! the default room, `[]` for an unknown room, a group room unless a private one is asked for,
//! empty messages, `messages_to_get`, the usual spellings of a boolean, and the seed's integer
//! `mess_type` and `id`.

#[macro_use]
mod common;

use common::{Backend, TestServer, alias, room};
use serde_json::{Value, json};

on_both_backends!(
    send_takes_post_with_or_without_the_slash_and_any_way_of_passing_parameters,
    no_room_name_means_the_default_room,
    an_unknown_room_has_no_messages,
    a_new_room_is_a_group_room_unless_a_private_one_is_asked_for,
    an_empty_message_is_a_message_on_the_seed_path_only,
    messages_to_get_returns_the_newest_n_in_order,
    group_room_takes_the_usual_spellings,
    mess_type_and_id_are_the_seeds_integers_on_the_wire_and_in_the_store,
);

/// The answer's status and JSON body.
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn texts(t: &TestServer, query: &str) -> Vec<String> {
    let (status, body) =
        answer(reqwest::Client::new().get(t.url(&format!("/messages/{query}")))).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

async fn send_takes_post_with_or_without_the_slash_and_any_way_of_passing_parameters(
    backend: Backend,
) {
    let t = TestServer::start(backend).await;
    let r = room("posted");
    let ann = alias("ann");
    let http = reqwest::Client::new();
    let query = |text: &str| {
        [
            ("room_name", r.to_string()),
            ("from_alias", ann.to_string()),
            ("message", text.to_string()),
        ]
    };
    for (path, request) in [
        ("/send/", http.post(t.url("/send/")).query(&query("query"))),
        ("/send", http.post(t.url("/send")).query(&query("no slash"))),
        (
            "/send/",
            http.post(t.url("/send/"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string(query("form")).unwrap()),
        ),
        (
            "/send/",
            http.post(t.url("/send/")).json(&json!({
                "room_name": r.as_str(), "from_alias": ann.as_str(), "message": "json",
                "group_room": true
            })),
        ),
    ] {
        let (status, body) = answer(request).await;
        assert_eq!(status, 200, "POST {path}: {body}");
        assert_eq!(body["status"], "stored");
    }
    assert_eq!(
        texts(&t, &format!("?room_name={r}")).await,
        ["query", "no slash", "form", "json"]
    );
    t.cleanup().await;
}

async fn no_room_name_means_the_default_room(backend: Backend) {
    let t = TestServer::start(backend).await;
    let ann = alias("ann");
    let url = t.url(&format!("/send/?from_alias={ann}&message=to%20general"));
    let (status, body) = answer(reqwest::Client::new().get(url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"]["mess_props"]["room_name"], "general");
    assert_eq!(texts(&t, "").await, ["to general"]);
    assert_eq!(texts(&t, "?room_name=general").await, ["to general"]);
    t.cleanup().await;
}

async fn an_unknown_room_has_no_messages(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("nobody");
    assert!(texts(&t, &format!("?room_name={r}")).await.is_empty());
    t.cleanup().await;
}

async fn a_new_room_is_a_group_room_unless_a_private_one_is_asked_for(backend: Backend) {
    let t = TestServer::start(backend).await;
    let (r, p) = (room("grouped"), room("private"));
    let (ann, bob, carl) = (alias("ann"), alias("bob"), alias("carl"));
    let http = reqwest::Client::new();
    let send = |room: &str, from: &str, to: Option<&str>, group: Option<&str>| {
        let mut url = format!("/send/?room_name={room}&from_alias={from}&message=hi");
        if let Some(to) = to {
            url.push_str(&format!("&to_alias={to}"));
        }
        if let Some(group) = group {
            url.push_str(&format!("&group_room={group}"));
        }
        http.get(t.url(&url))
    };
    // Omitted: a group room, which a third alias joins and where one may write to oneself.
    for (from, to) in [(&ann, Some(&bob)), (&carl, None), (&ann, Some(&ann))] {
        let (status, body) = answer(send(
            r.as_str(),
            from.as_str(),
            to.map(|a| a.as_str()),
            None,
        ))
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // Asked for: a private room of two, which a third alias cannot join.
    let (status, _) = answer(send(
        p.as_str(),
        ann.as_str(),
        Some(bob.as_str()),
        Some("false"),
    ))
    .await;
    assert_eq!(status, 200);
    let (status, body) = answer(send(p.as_str(), carl.as_str(), None, None)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("private_room_full"))
    );
    t.cleanup().await;
}

async fn an_empty_message_is_a_message_on_the_seed_path_only(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let registered = t.client.register(&common::unique("ann")).await.unwrap();
    let r = room("empty");
    let http = reqwest::Client::new();
    let url = t.url(&format!(
        "/send/?room_name={r}&from_alias={}&message=",
        registered.alias
    ));
    let (status, body) = answer(http.get(url).bearer_auth(&registered.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"]["message"], "");
    let (status, body) = answer(
        http.get(t.url(&format!("/messages/?room_name={r}")))
            .bearer_auth(&registered.token),
    )
    .await;
    assert_eq!((status, body), (200, json!([""])));
    // The REST API keeps refusing an empty text.
    let (status, body) = answer(
        http.post(t.url(&format!("/api/v1/rooms/{r}/messages")))
            .bearer_auth(&registered.token)
            .json(&json!({ "message": "" })),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    t.cleanup().await;
}

async fn messages_to_get_returns_the_newest_n_in_order(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("counted");
    let ann = alias("ann");
    for i in 1..=7 {
        let url = t.url(&format!(
            "/send/?room_name={r}&from_alias={ann}&message=m{i}"
        ));
        assert_eq!(reqwest::get(url).await.unwrap().status().as_u16(), 200);
    }
    assert_eq!(
        texts(&t, &format!("?room_name={r}&messages_to_get=3")).await,
        ["m5", "m6", "m7"]
    );
    let all: Vec<String> = (1..=7).map(|i| format!("m{i}")).collect();
    for everything in ["", "&messages_to_get=0", "&messages_to_get=-2"] {
        assert_eq!(texts(&t, &format!("?room_name={r}{everything}")).await, all);
    }
    let (status, body) = answer(
        reqwest::Client::new().get(t.url(&format!("/messages/?room_name={r}&messages_to_get=x"))),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    t.cleanup().await;
}

async fn group_room_takes_the_usual_spellings(backend: Backend) {
    let t = TestServer::start(backend).await;
    let (g, p) = (room("on"), room("off"));
    let (ann, bob) = (alias("ann"), alias("bob"));
    for (r, spelling, group) in [(&g, "ON", true), (&p, "Off", false)] {
        let url = t.url(&format!(
            "/send/?room_name={r}&from_alias={ann}&to_alias={bob}&message=hi&group_room={spelling}"
        ));
        let (status, body) = answer(reqwest::Client::new().get(url)).await;
        assert_eq!(status, 200, "{body}");
        let room = t.server().service().room(r).await.unwrap();
        assert_eq!(room.group_room(), group, "group_room={spelling}");
    }
    for (spelling, group) in [("1", true), ("yes", true), ("0", false), ("NO", false)] {
        let r = if group { &g } else { &p };
        let url = t.url(&format!(
            "/send/?room_name={r}&from_alias={ann}&to_alias={bob}&message=hi&group_room={spelling}"
        ));
        assert_eq!(
            reqwest::get(url).await.unwrap().status().as_u16(),
            200,
            "{spelling}"
        );
    }
    t.cleanup().await;
}

async fn mess_type_and_id_are_the_seeds_integers_on_the_wire_and_in_the_store(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("typed");
    let ann = alias("ann");
    let query = [
        ("room_name", r.as_str()),
        ("from_alias", ann.as_str()),
        ("message", "typed"),
    ];
    let (status, body) = answer(reqwest::Client::new().get(t.url("/send/")).query(&query)).await;
    assert_eq!(status, 200, "{body}");
    let props = &body["message"]["mess_props"];
    assert_eq!(
        props["mess_type"],
        json!(mess_chat::model::MESS_TYPE_RECEIVED.code())
    );
    let id = props["id"].as_u64().expect("id is an integer");
    assert!(id < 1 << 53, "JavaScript reads {id} exactly");
    if backend == Backend::Real {
        // As the store holds it: `_id` the id, `mess_type` an integer.
        let client = mongodb::Client::with_uri_str(common::mongo_url())
            .await
            .unwrap();
        let stored = client
            .database(&t.env.mongo_db)
            .collection::<mongodb::bson::Document>(r.as_str())
            .find_one(mongodb::bson::doc! { "_id": id as i64 })
            .await
            .unwrap()
            .expect("stored under its id");
        let props = stored.get_document("mess_props").unwrap();
        assert_eq!(props.get_i32("mess_type"), Ok(2), "{stored}");
        assert_eq!(stored.get_i64("_id"), Ok(id as i64));
    }
    t.cleanup().await;
}
