//! A fake Google: the service account of the push tests (a throwaway key
//! in `tests/fixtures`), an OAuth token endpoint and an FCM endpoint that
//! accepts every message.

use std::sync::Mutex;

use serde_json::json;

use super::{FakeServer, Reply};

pub const PRIVATE_KEY: &str = include_str!("../fixtures/push-test-key.pem");
pub const CLIENT_EMAIL: &str = "relay@test-project.iam.gserviceaccount.com";
pub const KEY_ID: &str = "test-key-id-0001";
pub const PROJECT: &str = "test-project";
/// Access tokens the fake OAuth endpoint issues start with this.
pub const ACCESS_PREFIX: &str = "ya29.fake-access-";

/// The service-account JSON of the test key, with `token_uri`.
pub fn key_json(private_key: &str, token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": KEY_ID,
        "private_key": private_key,
        "client_email": CLIENT_EMAIL,
        "client_id": "123456789",
        "token_uri": token_uri,
    })
    .to_string()
}

/// An OAuth endpoint issuing `ya29.fake-access-N` (N counting from 1),
/// valid for `lifetime` seconds.
pub fn oauth_server(lifetime: u64) -> FakeServer {
    let issued = Mutex::new(0u32);
    FakeServer::start(move |_| {
        let mut n = issued.lock().unwrap();
        *n += 1;
        let reply = json!({"access_token": format!("{ACCESS_PREFIX}{n}"), "expires_in": lifetime, "token_type": "Bearer"});
        Reply::json(200, &reply.to_string())
    })
}

/// An FCM endpoint that accepts every message.
pub fn fcm_ok() -> FakeServer {
    FakeServer::start(|_| {
        Reply::json(
            200,
            r#"{"name":"projects/test-project/messages/0:1700%abc"}"#,
        )
    })
}
