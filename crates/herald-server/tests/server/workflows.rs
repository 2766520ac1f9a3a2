//! Workflow definitions over HTTP: deployed from YAML or JSON, refused with
//! the path of what is wrong, fixed once deployed, listed and shown by
//! version.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use serde_json::{Value, json};

use crate::support::{Api, TestServer};

fn yaml(version: &str, greeting: &str) -> String {
    format!(
        "document: {{ dsl: '1.0.0', namespace: support, name: question, version: '{version}' }}\n\
         do:\n  - greet: {{ set: {{ greeting: '{greeting}' }} }}\n  - shout: {{ set: '${{ {{ loud: .greeting }} }}' }}\n"
    )
}

async fn deploy(api: &Api, content_type: &str, body: &str) -> reqwest::Response {
    api.post_raw(
        "/v1/workflows",
        Some(content_type),
        &[],
        body.as_bytes().to_vec(),
    )
    .await
}

#[tokio::test]
async fn given_definitions_should_deploy_once_per_version_and_show_them() {
    let (_server, api) = TestServer::start_ready().await;
    let first = deploy(&api, "application/yaml", &yaml("1.0.0", "hello")).await;
    assert_eq!(first.status(), 201);
    assert_eq!(
        first.headers()["location"],
        "/v1/workflows/support/question"
    );
    assert_eq!(
        first.json::<Value>().await.unwrap(),
        json!({"namespace": "support", "name": "question", "version": "1.0.0"})
    );
    // The same version again, changed: refused, the first kept.
    let again = deploy(&api, "application/yaml", &yaml("1.0.0", "changed")).await;
    assert_eq!(again.status(), 409);
    assert_eq!(
        again.json::<Value>().await.unwrap()["code"],
        "workflow_version_exists"
    );
    // JSON works too, and versions order like semver.
    let as_json = json!({
        "document": {"dsl": "1.0.0", "namespace": "support", "name": "question", "version": "1.10.0"},
        "do": [{"greet": {"set": {"greeting": "newest"}}}]
    });
    assert_eq!(
        deploy(&api, "application/json", &as_json.to_string())
            .await
            .status(),
        201
    );
    assert_eq!(
        deploy(&api, "text/yaml", &yaml("1.9.0", "middle"))
            .await
            .status(),
        201
    );

    let listed: Value = api.get("/v1/workflows").await.json().await.unwrap();
    assert_eq!(
        listed,
        json!({"workflows": [{"namespace": "support", "name": "question",
                              "versions": ["1.0.0", "1.9.0", "1.10.0"], "latest": "1.10.0"}]})
    );
    let latest: Value = api
        .get("/v1/workflows/support/question")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(latest["definition"]["version"], "1.10.0");
    assert_eq!(
        latest["definition"]["document"]["do"][0]["greet"]["set"]["greeting"],
        "newest"
    );
    assert!(
        latest["definition"]["deployed_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let first: Value = api
        .get("/v1/workflows/support/question?version=1.0.0")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        first["definition"]["document"]["do"][0]["greet"]["set"]["greeting"],
        "hello"
    );
    for path in [
        "/v1/workflows/support/nothing",
        "/v1/workflows/support/question?version=7",
    ] {
        let missing = api.get(path).await;
        assert_eq!(missing.status(), 404, "{path}");
        assert_eq!(
            missing.json::<Value>().await.unwrap()["code"],
            "workflow_not_found"
        );
    }
}

#[tokio::test]
async fn given_broken_definitions_should_be_refused_naming_the_path_and_store_nothing() {
    let (_server, api) = TestServer::start_ready().await;
    for (body, path, needle) in [
        (yaml("1", "x").replace("set: {", "sett: {"), "do[0].greet", "needs one of"),
        (yaml("1", "x").replace(".greeting", ".greeting |"), "do[1].shout.set", "jq syntax"),
        (
            "document: { dsl: '1.0.0', namespace: n, name: w, version: '1' }\ndo:\n  - build: { run: { container: { image: alpine } } }\n".to_owned(),
            "do[0].build.run.container",
            "not supported",
        ),
        ("document: { dsl: '0.8', namespace: n, name: w, version: '1' }\ndo: []\n".to_owned(), "document.dsl", "1.0.x"),
        ("do: [ : ]".to_owned(), "", "YAML"),
    ] {
        let refused = deploy(&api, "application/yaml", &body).await;
        assert_eq!(refused.status(), 400, "{body}");
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_workflow", "{problem}");
        assert_eq!(problem["path"], path, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains(needle), "{problem}");
    }
    let wrong_type = deploy(&api, "text/plain", &yaml("1", "x")).await;
    assert_eq!(wrong_type.status(), 415);
    let listed: Value = api.get("/v1/workflows").await.json().await.unwrap();
    assert_eq!(listed, json!({"workflows": []}));
}
