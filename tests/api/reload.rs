use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_traffic_swaps_atomically_or_keeps_the_old_policy() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("scripts")).unwrap();
    std::fs::create_dir_all(rules.join("fx")).unwrap();
    for f in [
        "consumer_prepaid.yaml",
        "corporate_expense.yaml",
        "scripts/night_owl.rhai",
        "scripts/new_merchant_burst.rhai",
        "fx/rates.yaml",
    ] {
        std::fs::copy(Path::new("rules").join(f), rules.join(f)).unwrap();
    }
    let s = Arc::new(Server::start_with(config(&dir.path().join("data"), &rules), Some(dir)).await);
    let (key, card) = s.tenant("ng", "NGN").await;
    let (_, _, p) = s
        .call(Method::GET, "/v1/policies", Some(&key), None, None)
        .await;
    let v1 = p
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "consumer-prepaid-africa")
        .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let traffic = {
        let (s, key, card) = (s.clone(), key.clone(), card.clone());
        tokio::spawn(async move {
            let mut versions = std::collections::BTreeSet::new();
            for i in 0..150 {
                let (st, text, v) = s
                    .call(
                        Method::POST,
                        "/v1/authorizations",
                        Some(&key),
                        None,
                        Some(auth(&format!("rt{i}"), &card, "10.00", "5411")),
                    )
                    .await;
                assert_eq!(st, StatusCode::OK, "{text}");
                versions.insert(v["policy_version"].as_str().unwrap().to_string());
            }
            versions
        })
    };
    // A broken edit is refused with its errors; the old policy stays live.
    let original = std::fs::read_to_string(rules.join("consumer_prepaid.yaml")).unwrap();
    std::fs::write(
        rules.join("consumer_prepaid.yaml"),
        original.replace("decline: \"57\"", "decline: \"58\""),
    )
    .unwrap();
    let (st, text, v) = s
        .call(Method::POST, "/v1/policies/reload", Some(ADMIN), None, None)
        .await;
    assert_eq!(
        (st, v["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/problems/invalid_policy")
        ),
        "{text}"
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("`58` is not a response code"),
        "{text}"
    );
    // A valid edit whose embedded tests fail is refused too.
    std::fs::write(
        rules.join("consumer_prepaid.yaml"),
        original.replace("amount_max: 500.00", "amount_max: 5.00"),
    )
    .unwrap();
    let (st, text, _) = s
        .call(Method::POST, "/v1/policies/reload", Some(ADMIN), None, None)
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(text.contains("failed"), "{text}");
    // A good edit swaps in.
    std::fs::write(
        rules.join("consumer_prepaid.yaml"),
        original.replace(
            "Consumer prepaid cards in NG",
            "Consumer prepaid cards (v2) in NG",
        ),
    )
    .unwrap();
    let (st, text, _) = s
        .call(Method::POST, "/v1/policies/reload", Some(ADMIN), None, None)
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    let versions = traffic.await.unwrap();
    let (_, _, after) = s
        .call(
            Method::POST,
            "/v1/authorizations",
            Some(&key),
            None,
            Some(auth("after", &card, "10.00", "5411")),
        )
        .await;
    let v2 = after["policy_version"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    assert!(
        versions.iter().all(|v| *v == v1 || *v == v2),
        "only whole policies ever decide: {versions:?}"
    );
    let (st, _, _) = s
        .call(Method::POST, "/v1/policies/reload", Some(&key), None, None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "program keys cannot reload");
    let mut s = Arc::try_unwrap(s).ok().unwrap();
    s.stop().await;
}

/// Issue #8.3: callers see policy files by their names in the rules directory, never the
/// server's absolute paths — in the listing and in a refused reload's details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_listings_and_errors_show_no_server_paths() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_with(dir.path(), &[]);
    let root = dir.path().display().to_string();
    let mut s = Server::start_with(config(&dir.path().join("data"), &rules), None).await;
    let (key, _) = s.tenant("ng", "NGN").await;
    let (_, text, list) = s
        .call(Method::GET, "/v1/policies", Some(&key), None, None)
        .await;
    assert!(!text.contains(&root), "{text}");
    let files: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["file"].as_str().unwrap())
        .collect();
    assert!(files.contains(&"consumer_prepaid.yaml"), "{files:?}");
    std::fs::write(
        rules.join("broken.yaml"),
        "policy: broken\ncurrency: USD\ntimezone: UTC\nrules:\n  - id: x\n    limit: { amount_max: abc }\n",
    )
    .unwrap();
    let (st, text, v) = s
        .call(Method::POST, "/v1/policies/reload", Some(ADMIN), None, None)
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(!text.contains(&root), "{text}");
    assert!(
        v["detail"].as_str().unwrap().starts_with("broken.yaml:"),
        "{text}"
    );
    s.stop().await;
}
