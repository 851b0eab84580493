//! Issue 11.5: every policy version that went live is stored (source, time, by whom);
//! an admin lists and reads them and rolls back to one, which is compiled and tested
//! again; a restart keeps the history.

use super::support::*;

const POLICY: &str = "consumer-prepaid-africa";
const DAILY: &str = "velocity: { window: 24h, amount_max: 1000.00, count_max: 20 }";

async fn live_version(s: &Server) -> String {
    let (_, _, p) = s
        .call(Method::GET, "/v1/policies", Some(ADMIN), None, None)
        .await;
    p.as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == POLICY)
        .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn versions(s: &Server) -> Vec<(String, String)> {
    let (st, text, v) = s
        .call(
            Method::GET,
            &format!("/v1/policies/{POLICY}/versions"),
            Some(ADMIN),
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["version"].as_str().unwrap().to_string(),
                a["by"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_kept_shown_and_rolled_back_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_with(dir.path(), &[]);
    let data = dir.path().join("data");
    let mut s = Server::start_with(config(&data, &rules), None).await;
    let v1 = live_version(&s).await;
    assert_eq!(versions(&s).await, [(v1.clone(), "startup".to_string())]);

    // An analyst raises the daily count; the reload stores the new version.
    let file = rules.join("consumer_prepaid.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, original.replace(DAILY, &DAILY.replace("20", "25"))).unwrap();
    let (st, text, _) = s
        .call(Method::POST, "/v1/policies/reload", Some(ADMIN), None, None)
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    let v2 = live_version(&s).await;
    assert_ne!(v1, v2);
    assert_eq!(
        versions(&s).await,
        [(v2.clone(), "admin".into()), (v1.clone(), "startup".into())]
    );

    // The old version's source, scripts included.
    let (st, text, src) = s
        .call(
            Method::GET,
            &format!("/v1/policies/{POLICY}/versions/{v1}"),
            Some(ADMIN),
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    assert!(src["text"].as_str().unwrap().contains(DAILY));
    assert!(
        src["scripts"]["scripts/night_owl.rhai"].is_string(),
        "{src}"
    );

    // Program keys see neither versions nor rollback; unknown versions are 404.
    let (key, _card) = s.tenant("ng", "NGN").await;
    let (st, _, _) = s
        .call(
            Method::GET,
            &format!("/v1/policies/{POLICY}/versions"),
            Some(&key),
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _, p) = s
        .call(
            Method::GET,
            &format!("/v1/policies/{POLICY}/versions/000000000000"),
            Some(ADMIN),
            None,
            None,
        )
        .await;
    assert_eq!(
        (st, p["type"].as_str().unwrap_or_default()),
        (StatusCode::NOT_FOUND, "/problems/policy_version_not_found")
    );

    // Roll back: v1 is live again and the history says so.
    let (st, text, _) = s
        .call(
            Method::POST,
            &format!("/v1/policies/{POLICY}/rollback"),
            Some(ADMIN),
            None,
            Some(json!({ "version": v1 })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    assert_eq!(live_version(&s).await, v1);
    assert_eq!(versions(&s).await[0], (v1.clone(), "admin rollback".into()));

    // A restart reads the files (still v2): that version goes live again, recorded.
    s.stop().await;
    let s = Server::start_with(config(&data, &rules), Some(dir)).await;
    assert_eq!(live_version(&s).await, v2);
    let after = versions(&s).await;
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(after[0], (v2, "startup".into()));
}
