//! Security end to end: secure by default, API keys (scoped, rotated,
//! revoked), JWT, tokens on SSE, the audit topic, rate limits per identity
//! (two keys), limits changed without a restart, the SDK and the CLI with
//! credentials.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use herald_client::{Client, ErrorCode};
use serde_json::{Value, json};

use crate::auth_table::{BOOTSTRAP, server_with_auth};
use crate::support::{
    TestServer, expect_json, expect_problem, herald, run_to_exit, serve, single_error,
};

fn event(id: &str) -> String {
    json!({"specversion": "1.0", "id": id, "source": "/test", "type": "t", "data": {"n": 1}})
        .to_string()
}

async fn publish(api: &crate::support::Api, topic: &str, id: &str) -> reqwest::Response {
    api.post_raw(
        &format!("/v1/topics/{topic}/events"),
        Some("application/cloudevents+json"),
        &[],
        event(id),
    )
    .await
}

#[tokio::test]
async fn given_non_loopback_listen_without_auth_when_serving_should_refuse_naming_both_ways_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = herald(dir.path());
    command.args(["serve", "--listen", "0.0.0.0:0", "--data-dir", "data"]);
    let output = run_to_exit(command).await;
    let error = single_error(&output, 2);
    assert!(error.contains("0.0.0.0:0"), "{error}");
    assert!(error.contains("auth.bootstrap_key"), "{error}");
    assert!(error.contains("--insecure"), "{error}");
}

#[tokio::test]
async fn given_insecure_flag_when_serving_off_loopback_should_start_and_warn() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = herald(dir.path());
    command.args([
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        "data",
        "--insecure",
    ]);
    let server = TestServer::spawn(dir, command).await;
    let port = server.addr.port();
    let client = reqwest::Client::new();
    let answer = client
        .get(format!("http://127.0.0.1:{port}/v1/topics"))
        .send()
        .await
        .unwrap();
    assert_ne!(answer.status().as_u16(), 401, "no auth configured: open");
    server.signal("TERM").await;
    let (_, stderr, _) = server.wait().await;
    assert!(stderr.contains("WITHOUT authentication"), "{stderr}");
}

#[tokio::test]
async fn given_loopback_without_auth_when_called_should_need_no_credentials() {
    let (_server, api) = TestServer::start_ready().await;
    let me = expect_json(api.get("/v1/auth/whoami").await, 200).await;
    assert_eq!(me["identity"], "anonymous");
    expect_json(api.post("/v1/topics", &json!({"name": "t"})).await, 201).await;
}

#[tokio::test]
async fn given_scoped_key_when_used_should_act_only_on_its_prefix_until_revoked() {
    let (_server, anonymous, admin) = server_with_auth(&[]).await;
    // Auth configured: credentials are needed on loopback too.
    expect_problem(anonymous.get("/v1/topics").await, 401, "unauthenticated").await;
    expect_json(anonymous.get("/healthz").await, 200).await;
    admin.create_topic(json!({"name": "orders.eu"})).await;
    admin.create_topic(json!({"name": "payments"})).await;
    let created = expect_json(
        admin
            .post(
                "/v1/auth/keys",
                &json!({"name": "tenant", "permissions": [
                    {"actions": ["topics:publish", "topics:read"], "resources": ["orders.*"]}
                ]}),
            )
            .await,
        201,
    )
    .await;
    let token = created["key"].as_str().unwrap();
    let key_id = created["key_id"].as_str().unwrap();
    assert!(token.starts_with("hrd_"), "{created}");
    let tenant = anonymous.with_token(token);
    expect_json(publish(&tenant, "orders.eu", "a").await, 201).await;
    let refused = expect_problem(publish(&tenant, "payments", "b").await, 403, "forbidden").await;
    assert_eq!(refused["action"], "topics:publish");
    assert_eq!(refused["resource"], "payments");
    let listed = expect_json(tenant.get("/v1/topics").await, 200).await;
    let names: Vec<&str> = listed["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["orders.eu"],
        "the list shows only what the key may read"
    );
    // The secret is shown once: the listing has neither it nor its hash.
    let keys = expect_json(admin.get("/v1/auth/keys").await, 200)
        .await
        .to_string();
    assert!(
        keys.contains(key_id) && !keys.contains(&token[21..]),
        "{keys}"
    );
    assert!(!keys.contains("hash"), "{keys}");
    let whoami = expect_json(tenant.get("/v1/auth/whoami").await, 200).await;
    assert_eq!(whoami["identity"], format!("key:{key_id}"));
    // A tenant key cannot manage keys.
    expect_problem(tenant.get("/v1/auth/keys").await, 403, "forbidden").await;
    assert_eq!(
        admin
            .delete(&format!("/v1/auth/keys/{key_id}"))
            .await
            .status(),
        204
    );
    expect_problem(
        publish(&tenant, "orders.eu", "c").await,
        401,
        "unauthenticated",
    )
    .await;
    expect_problem(
        admin.delete(&format!("/v1/auth/keys/{key_id}")).await,
        404,
        "key_not_found",
    )
    .await;
}

#[tokio::test]
async fn given_rotated_key_when_old_secret_used_should_refuse_it_and_accept_the_new_one() {
    let (_server, anonymous, admin) = server_with_auth(&[]).await;
    let created = expect_json(
        admin
            .post("/v1/auth/keys", &json!({"name": "r", "permissions": [{"actions": ["topics:read"], "resources": ["*"]}]}))
            .await,
        201,
    )
    .await;
    let old = created["key"].as_str().unwrap();
    let key_id = created["key_id"].as_str().unwrap();
    let rotated = expect_json(
        admin
            .post(&format!("/v1/auth/keys/{key_id}/rotate"), &json!({}))
            .await,
        200,
    )
    .await;
    let new = rotated["key"].as_str().unwrap();
    assert_eq!(rotated["key_id"], key_id);
    assert_ne!(old, new);
    expect_problem(
        anonymous.with_token(old).get("/v1/topics").await,
        401,
        "unauthenticated",
    )
    .await;
    expect_json(anonymous.with_token(new).get("/v1/topics").await, 200).await;
    // With an overlap, the previous secret keeps working for that long.
    let overlapped = expect_json(
        admin
            .post(
                &format!("/v1/auth/keys/{key_id}/rotate"),
                &json!({"overlap_ms": 600_000}),
            )
            .await,
        200,
    )
    .await;
    expect_json(anonymous.with_token(new).get("/v1/topics").await, 200).await;
    expect_json(
        anonymous
            .with_token(overlapped["key"].as_str().unwrap())
            .get("/v1/topics")
            .await,
        200,
    )
    .await;
}

#[tokio::test]
async fn given_expired_key_when_used_should_be_unauthenticated() {
    let (_server, anonymous, admin) = server_with_auth(&[]).await;
    let created = expect_json(
        admin
            .post(
                "/v1/auth/keys",
                &json!({"name": "old", "expires_at": "2001-01-01T00:00:00Z",
                        "permissions": [{"actions": ["topics:read"], "resources": ["*"]}]}),
            )
            .await,
        201,
    )
    .await;
    let token = created["key"].as_str().unwrap();
    expect_problem(
        anonymous.with_token(token).get("/v1/topics").await,
        401,
        "unauthenticated",
    )
    .await;
}

#[tokio::test]
async fn given_hs256_jwt_when_used_should_carry_its_claimed_permissions() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let secret = "jwt-secret-jwt-secret-jwt-secret-0123";
    let (_server, anonymous, admin) = server_with_auth(&[
        ("HERALD_AUTH__JWT__ALGORITHM", "HS256"),
        ("HERALD_AUTH__JWT__SECRET", secret),
        ("HERALD_AUTH__JWT__ISSUER", "https://idp.test"),
        ("HERALD_AUTH__JWT__AUDIENCE", "herald"),
    ])
    .await;
    admin.create_topic(json!({"name": "orders"})).await;
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap();
    let token = |exp: i64, audience: &str| {
        let claims = json!({"sub": "svc", "iss": "https://idp.test", "aud": audience, "exp": exp,
            "herald_permissions": [{"actions": ["topics:publish"], "resources": ["orders"]}]});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let valid = anonymous.with_token(&token(now + 300, "herald"));
    expect_json(publish(&valid, "orders", "j1").await, 201).await;
    expect_problem(valid.get("/v1/auth/keys").await, 403, "forbidden").await;
    let me = expect_json(valid.get("/v1/auth/whoami").await, 200).await;
    assert_eq!(me["identity"], "jwt:svc");
    let expired = anonymous.with_token(&token(now - 3_600, "herald"));
    expect_problem(
        publish(&expired, "orders", "j2").await,
        401,
        "unauthenticated",
    )
    .await;
    let other_audience = anonymous.with_token(&token(now + 300, "other"));
    expect_problem(
        publish(&other_audience, "orders", "j3").await,
        401,
        "unauthenticated",
    )
    .await;
}

#[tokio::test]
async fn given_access_token_query_when_following_over_sse_should_authenticate_and_never_log_it() {
    let (server, anonymous, admin) = server_with_auth(&[("HERALD_LOG__LEVEL", "trace")]).await;
    admin.create_topic(json!({"name": "feed"})).await;
    let reader = admin
        .create_key(
            "reader",
            json!([{"actions": ["topics:read"], "resources": ["feed"]}]),
        )
        .await;
    let sse = format!("/v1/topics/feed/events/stream?from=earliest&access_token={reader}");
    let response = anonymous.get(&sse).await;
    assert_eq!(response.status(), 200);
    drop(response);
    expect_problem(
        anonymous.get("/v1/topics/feed/events/stream").await,
        401,
        "unauthenticated",
    )
    .await;
    // Only SSE and WebSocket routes take a token from the query.
    let elsewhere = anonymous
        .get(&format!("/v1/topics/feed?access_token={reader}"))
        .await;
    expect_problem(elsewhere, 401, "unauthenticated").await;
    server.signal("TERM").await;
    let (_, stderr, _) = server.wait().await;
    let secret = &reader[21..];
    assert!(!stderr.contains(secret), "the token leaked into the logs");
}

#[tokio::test]
async fn given_deletes_and_refusals_when_audited_should_be_on_the_audit_topic_for_admins_only() {
    let (_server, anonymous, admin) = server_with_auth(&[]).await;
    admin.create_topic(json!({"name": "doomed"})).await;
    let reader = anonymous.with_token(
        &admin
            .create_key(
                "reader",
                json!([{"actions": ["topics:read", "topics:manage"], "resources": ["*"]}]),
            )
            .await,
    );
    assert_eq!(reader.delete("/v1/topics/doomed").await.status(), 204);
    expect_problem(
        reader.post("/v1/admin/flush", &json!({})).await,
        403,
        "forbidden",
    )
    .await;
    // topics:read on * does not reach the audit topic: only admin does.
    expect_problem(
        reader.get("/v1/topics/herald.audit/events").await,
        403,
        "forbidden",
    )
    .await;
    let wanted = [
        "herald.audit.key.created",
        "herald.audit.topic.deleted",
        "herald.audit.permission.denied",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let read = expect_json(
            admin.get("/v1/topics/herald.audit/events?limit=100").await,
            200,
        )
        .await;
        let types: Vec<String> = read["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["type"].as_str().unwrap().to_owned())
            .collect();
        let events = read["events"].as_array().unwrap();
        let denied = |action: &str, resource: &str| {
            events.iter().any(|event| {
                event["type"] == "herald.audit.permission.denied"
                    && event["data"]["action"] == action
                    && event["data"]["resource"] == resource
            })
        };
        if wanted.iter().all(|kind| types.iter().any(|t| t == kind))
            && denied("admin", "*")
            && denied("topics:read", "herald.audit")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit trail incomplete: {types:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends requests with `api` until one is refused with 429; returns it.
async fn until_limited(api: &crate::support::Api) -> reqwest::Response {
    for _ in 0..1_000 {
        let response = api.get("/v1/topics").await;
        if response.status() == 429 {
            return response;
        }
        assert_eq!(response.status(), 200);
    }
    panic!("never rate limited");
}

#[tokio::test]
async fn given_two_keys_when_one_exceeds_its_rate_should_refuse_only_it_with_a_usable_retry_after()
{
    let (_server, anonymous, admin) =
        server_with_auth(&[("HERALD_AUTH__LIMITS__REQUESTS_PER_S", "5")]).await;
    let permissions = json!([{"actions": ["topics:read"], "resources": ["*"]}]);
    let noisy = anonymous.with_token(&admin.create_key("noisy", permissions.clone()).await);
    let quiet = anonymous.with_token(&admin.create_key("quiet", permissions).await);
    let refused = until_limited(&noisy).await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    let problem = expect_problem(refused, 429, "rate_limited").await;
    assert_eq!(problem["limit"], "requests_per_s");
    // The other identity has its own bucket: a burst within its rate passes.
    for _ in 0..4 {
        expect_json(quiet.get("/v1/topics").await, 200).await;
    }
    // After the advertised wait, the limited key is served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    expect_json(noisy.get("/v1/topics").await, 200).await;
}

#[tokio::test]
async fn given_key_limits_changed_through_the_api_should_apply_at_once_without_restart() {
    let (_server, anonymous, admin) = server_with_auth(&[]).await;
    let created = expect_json(
        admin
            .post("/v1/auth/keys", &json!({"name": "k", "permissions": [{"actions": ["topics:read"], "resources": ["*"]}]}))
            .await,
        201,
    )
    .await;
    let key = anonymous.with_token(created["key"].as_str().unwrap());
    for _ in 0..20 {
        expect_json(key.get("/v1/topics").await, 200).await;
    }
    let key_id = created["key_id"].as_str().unwrap();
    let changed = expect_json(
        admin
            .patch(
                &format!("/v1/auth/keys/{key_id}"),
                &json!({"limits": {"requests_per_s": 2}}),
            )
            .await,
        200,
    )
    .await;
    assert_eq!(changed["limits"]["requests_per_s"], 2);
    expect_problem(until_limited(&key).await, 429, "rate_limited").await;
    let me = expect_json(admin.get("/v1/auth/whoami").await, 200).await;
    assert_eq!(
        me["limits"]["requests_per_s"], 0,
        "other identities keep the server's limits"
    );
}

#[tokio::test]
async fn given_server_limits_changed_in_the_file_when_sent_sighup_should_apply_them_without_restart()
 {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    let write_limit = |requests_per_s: u32| {
        std::fs::write(
            &config,
            format!("[auth.limits]\nrequests_per_s = {requests_per_s}\n"),
        )
        .unwrap();
    };
    write_limit(0);
    let mut command = serve(dir.path());
    command
        .arg("--config")
        .arg(&config)
        .env("HERALD_AUTH__BOOTSTRAP_KEY", BOOTSTRAP);
    let (server, anonymous) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    let admin = anonymous.with_token(BOOTSTRAP);
    for _ in 0..50 {
        expect_json(admin.get("/v1/topics").await, 200).await;
    }

    write_limit(2);
    server.signal("HUP").await;
    // The reload is asynchronous: poll until the new limit shows.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let me = expect_json(admin.get("/v1/auth/whoami").await, 200).await;
        if me["limits"]["requests_per_s"] == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never reloaded: {me}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expect_problem(until_limited(&admin).await, 429, "rate_limited").await;

    let (status, stderr, _dir) = {
        server.signal("TERM").await;
        server.wait().await
    };
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("new [auth.limits] in force"), "{stderr}");
}

#[tokio::test]
async fn given_sdk_with_bearer_token_when_calling_should_authenticate_and_see_grpc_codes() {
    let (server, _anonymous, admin) =
        server_with_auth(&[("HERALD_AUTH__LIMITS__PUBLISH_EVENTS_PER_S", "3")]).await;
    admin.create_topic(json!({"name": "orders.eu"})).await;
    let token = admin
        .create_key(
            "sdk",
            json!([{"actions": ["topics:publish", "topics:read"], "resources": ["orders.*"]}]),
        )
        .await;
    let anonymous = Client::connect(server.url("")).await.unwrap();
    let error = anonymous.list_topics().await.unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::Unauthenticated), "{error}");
    let client = Client::builder(server.url(""))
        .bearer_token(token)
        .connect()
        .await
        .unwrap();
    let topics = client.list_topics().await.unwrap();
    assert_eq!(topics.len(), 1);
    let error = client
        .create_topic(herald_client::TopicOptions::new("payments"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::Forbidden), "{error}");
    let mut limited = None;
    for index in 0..100 {
        let event = herald_types::Event::new(format!("e{index}"), "/sdk", "t");
        match client.publish("orders.eu", vec![event]).await {
            Ok(_) => {}
            Err(error) => {
                limited = Some(error);
                break;
            }
        }
    }
    let error = limited.expect("publish_events_per_s = 3 must refuse a burst");
    assert_eq!(error.code(), Some(&ErrorCode::RateLimited), "{error}");
    let metadata = match &error {
        herald_client::Error::Api { metadata, .. } => metadata.clone(),
        other => panic!("{other}"),
    };
    assert!(metadata.contains_key("retry_after_s"), "{metadata:?}");
}

#[tokio::test]
async fn given_cli_with_token_when_managing_keys_should_create_use_and_revoke_them() {
    let (server, _anonymous, _admin) = server_with_auth(&[]).await;
    let cli = |args: &[&str], token: Option<&str>| {
        let mut command = herald(server.dir.path());
        command
            .args(args)
            .args(["--server", &server.url(""), "--output", "json"]);
        if let Some(token) = token {
            command.env("HERALD_TOKEN", token);
        }
        run_to_exit(command)
    };
    let refused = cli(&["topic", "list"], None).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unauthenticated"));
    let created = cli(
        &[
            "auth",
            "key",
            "create",
            "ci",
            "--allow",
            "topics:manage,topics:read=ci.*",
        ],
        Some(BOOTSTRAP),
    )
    .await;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let token = created["key"].as_str().unwrap();
    let made = cli(&["topic", "create", "ci.builds"], Some(token)).await;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let other = cli(&["topic", "create", "prod"], Some(token)).await;
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).contains("forbidden"));
    let listed = cli(&["auth", "key", "list"], Some(BOOTSTRAP)).await;
    assert!(String::from_utf8_lossy(&listed.stdout).contains(created["key_id"].as_str().unwrap()));
    let revoked = cli(
        &["auth", "key", "revoke", created["key_id"].as_str().unwrap()],
        Some(BOOTSTRAP),
    )
    .await;
    assert!(revoked.status.success());
    let after = cli(&["topic", "list"], Some(token)).await;
    assert_eq!(after.status.code(), Some(1));
}

#[tokio::test]
async fn given_herald_token_in_environment_when_serving_should_not_be_read_as_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.env("HERALD_TOKEN", "hrd_for_the_cli");
    let (_server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    expect_json(api.get("/v1/topics").await, 200).await;
}

#[tokio::test]
async fn given_topic_quotas_when_an_identity_creates_past_them_should_refuse_only_it_and_free_on_delete()
 {
    let (server, anonymous, admin) = server_with_auth(&[
        ("HERALD_AUTH__LIMITS__MAX_TOPICS", "2"),
        ("HERALD_AUTH__LIMITS__MAX_PARTITIONS", "3"),
    ])
    .await;
    let permissions = json!([{"actions": ["topics:manage"], "resources": ["*"]}]);
    let tenant_token = admin.create_key("tenant", permissions.clone()).await;
    let tenant = anonymous.with_token(&tenant_token);
    let other = anonymous.with_token(&admin.create_key("other", permissions).await);
    expect_json(tenant.post("/v1/topics", &json!({"name": "a"})).await, 201).await;
    let refused = expect_problem(
        tenant
            .post("/v1/topics", &json!({"name": "b", "partitions": 3}))
            .await,
        409,
        "limit_exceeded",
    )
    .await;
    assert_eq!(refused["limit"], "max_partitions", "{refused}");
    expect_json(
        tenant
            .post("/v1/topics", &json!({"name": "b", "partitions": 2}))
            .await,
        201,
    )
    .await;
    let refused = expect_problem(
        tenant.post("/v1/topics", &json!({"name": "c"})).await,
        409,
        "limit_exceeded",
    )
    .await;
    assert_eq!(refused["limit"], "max_topics", "{refused}");
    expect_problem(tenant.get("/v1/topics/c").await, 403, "forbidden").await;
    assert_eq!(
        admin.get("/v1/topics/c").await.status(),
        404,
        "nothing was created"
    );
    // Another identity has its own count; a refused create left no trace.
    expect_json(other.post("/v1/topics", &json!({"name": "c"})).await, 201).await;
    // A delete frees its place.
    assert_eq!(tenant.delete("/v1/topics/a").await.status(), 204);
    expect_json(tenant.post("/v1/topics", &json!({"name": "d"})).await, 201).await;
    // Over gRPC too.
    let client = Client::builder(server.url(""))
        .bearer_token(tenant_token)
        .connect()
        .await
        .unwrap();
    let error = client
        .create_topic(herald_client::TopicOptions::new("e"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::LimitExceeded), "{error}");
}

#[tokio::test]
async fn given_blob_quota_when_an_identity_uploads_past_it_should_cut_it_off_and_keep_nothing() {
    let (_server, anonymous, admin) =
        server_with_auth(&[("HERALD_AUTH__LIMITS__MAX_BLOB_BYTES", "10")]).await;
    let permissions = json!([{"actions": ["blobs:write", "blobs:read"], "resources": ["*"]}]);
    let tenant = anonymous.with_token(&admin.create_key("tenant", permissions.clone()).await);
    let other = anonymous.with_token(&admin.create_key("other", permissions).await);
    let upload = |api: crate::support::Api, bytes: &'static str| async move {
        api.post_raw("/v1/blobs", Some("application/octet-stream"), &[], bytes)
            .await
    };
    expect_json(upload(tenant.clone(), "123456").await, 201).await;
    let refused = expect_problem(
        upload(tenant.clone(), "abcdef").await,
        409,
        "limit_exceeded",
    )
    .await;
    assert_eq!(refused["limit"], "max_blob_bytes", "{refused}");
    // Nothing of the refused upload was kept: its id does not exist.
    let id = "sha256:bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721";
    assert_eq!(admin.get(&format!("/v1/blobs/{id}")).await.status(), 404);
    expect_json(upload(tenant.clone(), "abcd").await, 201).await;
    expect_problem(upload(tenant, "x").await, 409, "limit_exceeded").await;
    // Another identity has its own count.
    expect_json(upload(other, "abcdef").await, 201).await;
}

#[tokio::test]
async fn given_full_blob_quota_when_the_collector_removes_the_blob_should_free_the_quota() {
    let (_server, anonymous, admin) = server_with_auth(&[
        ("HERALD_AUTH__LIMITS__MAX_BLOB_BYTES", "6"),
        ("HERALD_BLOBS__UNREFERENCED_TTL_MS", "200"),
        ("HERALD_BLOBS__GC_INTERVAL_MS", "100"),
    ])
    .await;
    let token = admin
        .create_key(
            "tenant",
            json!([{"actions": ["blobs:write"], "resources": ["*"]}]),
        )
        .await;
    let tenant = anonymous.with_token(&token);
    let upload = || tenant.post_raw("/v1/blobs", Some("application/octet-stream"), &[], "123456");
    let stored = expect_json(upload().await, 201).await;
    expect_problem(
        tenant
            .post_raw("/v1/blobs", Some("application/octet-stream"), &[], "z")
            .await,
        409,
        "limit_exceeded",
    )
    .await;
    let path = format!("/v1/blobs/{}", stored["id"].as_str().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while admin.get(&path).await.status() != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the blob was never collected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The collector forgot it (after deleting it): the quota frees up.
    loop {
        let response = upload().await;
        if response.status() == 201 {
            break;
        }
        expect_problem(response, 409, "limit_exceeded").await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the quota was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
