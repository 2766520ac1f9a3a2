//! Deployed definitions on the real default backend: written once per
//! version, found again after a restart, listed by name.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;

use herald_backend::Backend;
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::LogMetrics;
use herald_workflows::store::{Definitions, StoreError};

mod engine;

async fn open(dir: &std::path::Path) -> Arc<dyn Backend> {
    Arc::new(
        EmbeddedBackend::open(EmbeddedOptions::new(dir), LogMetrics::new())
            .await
            .unwrap(),
    )
}

fn document(name: &str, version: &str, greeting: &str) -> String {
    format!(
        "document: {{ dsl: '1.0.0', namespace: support, name: {name}, version: '{version}' }}\n\
         do:\n  - greet: {{ set: {{ greeting: {greeting} }} }}\n"
    )
}

#[tokio::test]
async fn given_versions_deployed_should_keep_each_as_it_was_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let backend = open(dir.path()).await;
        let definitions = Definitions::new(Arc::clone(&backend));
        let first = definitions
            .deploy(
                &document("question", "1.0.0", "hello"),
                "2026-12-03T08:00:00.000Z".into(),
            )
            .await
            .unwrap();
        assert_eq!(
            (
                first.namespace.as_str(),
                first.name.as_str(),
                first.version.as_str()
            ),
            ("support", "question", "1.0.0")
        );
        // The same version again, even with another text: refused, unchanged.
        let again = definitions
            .deploy(
                &document("question", "1.0.0", "changed"),
                "2026-12-03T08:01:00.000Z".into(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(again, StoreError::VersionExists(ref key) if key == "support/question/1.0.0"),
            "{again}"
        );
        definitions
            .deploy(
                &document("question", "1.10.0", "newer"),
                "2026-12-03T08:02:00.000Z".into(),
            )
            .await
            .unwrap();
        definitions
            .deploy(
                &document("question", "1.9.0", "older"),
                "2026-12-03T08:03:00.000Z".into(),
            )
            .await
            .unwrap();
        definitions
            .deploy(
                &document("refund", "1", "x"),
                "2026-12-03T08:04:00.000Z".into(),
            )
            .await
            .unwrap();
        // A broken one is refused before anything is written.
        let broken = definitions
            .deploy(
                &document("broken", "1", "x").replace("set:", "sett:"),
                String::new(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(broken, StoreError::Invalid(ref error) if error.path() == "do[0].greet"),
            "{broken}"
        );
        backend.shutdown().await.unwrap();
    }
    let definitions = Definitions::new(open(dir.path()).await);
    let kept = definitions
        .get("support", "question", "1.0.0")
        .await
        .unwrap();
    assert_eq!(kept.source["do"][0]["greet"]["set"]["greeting"], "hello");
    assert_eq!(kept.deployed_at, "2026-12-03T08:00:00.000Z");
    assert!(kept.definition().is_ok());
    assert_eq!(
        definitions.versions("support", "question").await.unwrap(),
        ["1.0.0", "1.9.0", "1.10.0"]
    );
    assert_eq!(
        definitions
            .latest("support", "question")
            .await
            .unwrap()
            .version,
        "1.10.0"
    );
    assert_eq!(
        definitions.list().await.unwrap(),
        [
            (
                "support".to_owned(),
                "question".to_owned(),
                vec!["1.0.0".to_owned(), "1.9.0".to_owned(), "1.10.0".to_owned()]
            ),
            (
                "support".to_owned(),
                "refund".to_owned(),
                vec!["1".to_owned()]
            ),
        ]
    );
    assert!(matches!(
        definitions.get("support", "question", "9").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        definitions.latest("support", "nothing").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        definitions.get("support", "broken", "1").await,
        Err(StoreError::NotFound(_))
    ));
}
