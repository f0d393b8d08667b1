//! Keys, roles and tenant isolation, walked over the router's own route
//! table so that a new endpoint cannot be left out. Like the scenario
//! suite, these run against the embedded Weft or the one WEFT_SCENARIO_URL
//! and WEFT_SCENARIO_KEY name (the AWS deployment); there a second
//! workspace's key comes from WEFT_SCENARIO_OTHER_KEY.

use std::time::Duration;

use serde_json::{Value, json};
use weft::api::{Access, RouteSpec, route_table};
use weft::domain::Role;

use crate::common::{TestApp, upstream};

async fn target() -> TestApp {
    let (app, target) = crate::scenarios::target().await;
    eprintln!("access suite against {target}");
    app
}

/// An owner key of another workspace on the same Weft.
async fn other_workspace(app: &TestApp) -> String {
    if app.platform.is_some() {
        return app.other_workspace().await;
    }
    std::env::var("WEFT_SCENARIO_OTHER_KEY")
        .expect("WEFT_SCENARIO_OTHER_KEY: a key of a second workspace of the Weft under test")
}

/// Makes a key with the app's owner key; returns (id, key).
async fn make_key(app: &TestApp, body: Value) -> (String, String) {
    let r = app.post("/v1/keys", body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    (
        r.body["id"].as_str().expect("id").to_owned(),
        r.body["key"].as_str().expect("key").to_owned(),
    )
}

/// The route's path with each `{param}` replaced by `value(param)`.
fn fill(path: &str, value: impl Fn(&str) -> String) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) => value(param),
                None => seg.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

fn body_for(spec: &RouteSpec) -> Option<Value> {
    matches!(spec.method.as_str(), "POST" | "PUT" | "PATCH").then(|| json!({}))
}

fn guarded() -> Vec<RouteSpec> {
    route_table()
        .into_iter()
        .filter(|s| s.access != Access::Public)
        .collect()
}

#[tokio::test]
async fn every_route_checks_the_callers_role_and_a_limited_keys_workflows() {
    let app = target().await;
    let wf = app
        .create_workflow(
            json!({"name": "w", "steps": [{"id": "a", "type": "transform", "value": 1}]}),
        )
        .await;
    // The owner is the app's own key (the workspace keeps one owner key,
    // which other tests on a shared target rely on).
    let mut callers: Vec<(String, Role, bool)> = vec![(app.key.clone(), Role::Owner, false)];
    for role in [Role::Viewer, Role::Editor, Role::Admin] {
        let (_, key) = make_key(&app, json!({"name": role.as_str(), "role": role.as_str()})).await;
        callers.push((key, role, false));
    }
    for role in [Role::Viewer, Role::Editor] {
        let (_, key) = make_key(
            &app,
            json!({"name": "limited", "role": role.as_str(), "workflows": [wf]}),
        )
        .await;
        callers.push((key, role, true));
    }
    let routes = guarded();
    assert!(routes.len() > 40, "{} routes", routes.len());
    for spec in &routes {
        // Ids that name nothing: an allowed caller gets past the guard to
        // a 404 or 422, whatever its role (an editor's own-workflow check
        // comes after the lookup).
        let path = fill(spec.path, |p| match p {
            "name" => "nothing_here".into(),
            other => format!("{other}_nope"),
        });
        // No key, or a key that is not one: 401 before anything else.
        for key in [None, Some("weft_not_a_key_at_all")] {
            let r = app
                .call(spec.method.as_str(), &path, body_for(spec), key, &[])
                .await;
            assert_eq!(r.status, 401, "{} {path}: {}", spec.method, r.body);
        }
        for (key, role, limited) in &callers {
            let need = match spec.access {
                Access::Role(r) | Access::RunsOf(r) => r,
                Access::Public => unreachable!(),
            };
            let forbidden = *role < need || (*limited && matches!(spec.access, Access::Role(_)));
            let r = app
                .call(spec.method.as_str(), &path, body_for(spec), Some(key), &[])
                .await;
            if forbidden {
                assert_eq!(
                    r.status, 403,
                    "{role:?} (limited: {limited}) {} {path}: {}",
                    spec.method, r.body
                );
                assert_eq!(r.body["type"], "/problems/forbidden", "{}", r.body);
            } else {
                assert!(
                    r.status != 403 && r.status != 401 && r.status < 500,
                    "{role:?} (limited: {limited}) {} {path}: {} {}",
                    spec.method,
                    r.status,
                    r.body
                );
            }
        }
    }
}

/// What workspace A holds, by path parameter.
struct Held {
    workflow: String,
    run: String,
    schedule: String,
    hook: String,
    endpoint: String,
    delivery: String,
    key: String,
    secret: String,
}

async fn fill_workspace(app: &TestApp) -> Held {
    let up = upstream::spawn().await;
    let r = app
        .put(
            "/v1/secrets/hook_a",
            json!({"value": "s3cr3t-value-0123456789"}),
        )
        .await;
    assert!(r.status < 300, "{}", r.body);
    let r = app
        .post("/v1/endpoints", json!({"url": format!("{up}/echo")}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let endpoint = r.body["id"].as_str().expect("id").to_owned();
    let workflow = app
        .create_workflow(
            json!({"name": "held", "steps": [{"id": "a", "type": "transform", "value": 1}]}),
        )
        .await;
    let run = app.start_run(&workflow, json!({})).await;
    app.wait_finished(&run).await;
    let r = app
        .post(
            &format!("/v1/workflows/{workflow}/schedules"),
            json!({"spec": "0 9 * * *"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let schedule = r.body["id"].as_str().expect("id").to_owned();
    let r = app
        .post(
            &format!("/v1/workflows/{workflow}/hooks"),
            json!({"verify": {"scheme": "github", "secret": "hook_a"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let hook = r.body["id"].as_str().expect("id").to_owned();
    let (key, _) = make_key(app, json!({"name": "held", "role": "viewer"})).await;
    let deadline = tokio::time::Instant::now() + app.wait_deadline();
    let delivery = loop {
        let r = app
            .get(&format!("/v1/endpoints/{endpoint}/deliveries"))
            .await;
        if let Some(id) = r.body["items"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Held {
        workflow,
        run,
        schedule,
        hook,
        endpoint,
        delivery,
        key,
        secret: "hook_a".into(),
    }
}

#[tokio::test]
async fn another_workspaces_resources_are_not_found_and_its_lists_show_nothing_of_them() {
    let app = target().await;
    let held = fill_workspace(&app).await;
    let theirs = other_workspace(&app).await;
    let ids = [
        &held.workflow,
        &held.run,
        &held.schedule,
        &held.hook,
        &held.endpoint,
        &held.delivery,
        &held.key,
    ];
    for spec in guarded() {
        // A secret name is the caller's own namespace: B may make its own.
        if spec.method == "PUT" && spec.path == "/v1/secrets/{name}" {
            continue;
        }
        let real = fill(spec.path, |p| match p {
            "id" if spec.path.starts_with("/v1/workflows") => held.workflow.clone(),
            "id" if spec.path.starts_with("/v1/runs") => held.run.clone(),
            "id" => held.endpoint.clone(),
            "schedule_id" => held.schedule.clone(),
            "hook_id" => held.hook.clone(),
            "delivery_id" => held.delivery.clone(),
            "key_id" => held.key.clone(),
            "name" => held.secret.clone(),
            "step_id" => "a".into(),
            other => panic!("a new path parameter `{other}`: add what workspace A holds for it"),
        });
        let r = app
            .call(
                spec.method.as_str(),
                &real,
                body_for(&spec),
                Some(&theirs),
                &[],
            )
            .await;
        let text = r.body.to_string();
        // (Ids the caller sent may be quoted back; no other of A's.)
        for id in ids.iter().filter(|id| !real.contains(id.as_str())) {
            assert!(
                !text.contains(id.as_str()),
                "{} {real} shows A's `{id}` to B: {text}",
                spec.method
            );
        }
        if real != spec.path {
            // An id of A's is answered as an id that exists nowhere.
            let none = fill(spec.path, |p| match p {
                "id" if spec.path.starts_with("/v1/workflows") => "wf_nowhere".into(),
                "id" if spec.path.starts_with("/v1/runs") => "run_nowhere".into(),
                "id" => "ep_nowhere".into(),
                "name" => "no_such_secret".into(),
                "step_id" => "a".into(),
                other => format!("{other}_nowhere"),
            });
            let n = app
                .call(
                    spec.method.as_str(),
                    &none,
                    body_for(&spec),
                    Some(&theirs),
                    &[],
                )
                .await;
            assert!(
                r.status >= 400,
                "{} {real}: {} {}",
                spec.method,
                r.status,
                r.body
            );
            assert_eq!(
                r.status, n.status,
                "{} {real}: {} vs {}",
                spec.method, r.body, n.body
            );
            if spec.method == "GET" || spec.method == "DELETE" {
                assert_eq!(r.status, 404, "{} {real}: {}", spec.method, r.body);
            }
        }
    }
    // Nothing of A's was changed by B's calls.
    let r = app.get(&format!("/v1/workflows/{}", held.workflow)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.get(&format!("/v1/keys/{}", held.key)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.get(&format!("/v1/endpoints/{}", held.endpoint)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app
        .get(&format!(
            "/v1/workflows/{}/hooks/{}",
            held.workflow, held.hook
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.get("/v1/secrets").await;
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(names.contains(&"hook_a"), "{}", r.body);
    let r = app.get(&format!("/v1/runs/{}", held.run)).await;
    assert_eq!(r.body["status"], "COMPLETED", "{}", r.body);
    // A shared target is left as it was found: no endpoint takes the
    // events of later runs, no schedule fires.
    for path in [
        format!("/v1/endpoints/{}", held.endpoint),
        format!("/v1/workflows/{}/hooks/{}", held.workflow, held.hook),
        format!(
            "/v1/workflows/{}/schedules/{}",
            held.workflow, held.schedule
        ),
        format!("/v1/workflows/{}", held.workflow),
        format!("/v1/secrets/{}", held.secret),
    ] {
        let r = app.delete(&path).await;
        assert_eq!(r.status, 204, "{path}: {}", r.body);
    }
}

#[tokio::test]
async fn keys_are_shown_once_limited_by_role_and_workflow_and_revoked_at_once() {
    let app = target().await;
    let (admin_id, admin) = make_key(&app, json!({"name": "ops", "role": "admin"})).await;
    let listed = app.get("/v1/keys").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let text = listed.body.to_string();
    assert!(!text.contains(&admin) && !text.contains(&app.key), "{text}");
    let mine = listed.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|k| k["id"] == admin_id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(mine["role"], "admin");
    assert!(admin.starts_with(mine["prefix"].as_str().expect("prefix")));
    assert_eq!(mine["prefix"].as_str().map(str::len), Some(11));

    // An admin cannot make (or revoke) an owner key.
    let r = app
        .call(
            "POST",
            "/v1/keys",
            Some(json!({"name": "up", "role": "owner"})),
            Some(&admin),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let owner_id = app.get("/v1/keys").await.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|k| k["role"] == "owner")
        .and_then(|k| k["id"].as_str())
        .expect("owner key")
        .to_owned();
    let r = app
        .call(
            "DELETE",
            &format!("/v1/keys/{owner_id}"),
            None,
            Some(&admin),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Nor can the workspace lose its last owner key.
    let r = app.delete(&format!("/v1/keys/{owner_id}")).await;
    assert_eq!(r.status, 409, "{}", r.body);

    // Bad requests name each field.
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "", "role": "king", "workflows": ["wf_nope", 3], "expires_at": "2001-01-01T00:00:00Z", "x": 1}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let paths = crate::common::error_paths(&r.body);
    for p in ["$.name", "$.role", "$.workflows[1]", "$.expires_at", "$.x"] {
        assert!(paths.contains(&p), "{p}: {}", r.body);
    }
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "n", "role": "viewer", "workflows": ["wf_nope"]}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(crate::common::error_paths(&r.body), vec!["$.workflows[0]"]);

    // A key limited to a workflow starts and reads its runs, and no others'.
    let def = |n: &str| json!({"name": n, "steps": [{"id": "a", "type": "transform", "value": "{{ trigger.n }}"}]});
    let (mine_wf, other_wf) = (
        app.create_workflow(def("mine")).await,
        app.create_workflow(def("other")).await,
    );
    let other_run = app.start_run(&other_wf, json!({"n": 1})).await;
    let (_, limited) = make_key(
        &app,
        json!({"name": "robot", "role": "editor", "workflows": [mine_wf]}),
    )
    .await;
    let as_limited = TestApp::external(&app.base, &limited);
    let run = as_limited.start_run(&mine_wf, json!({"n": 2})).await;
    assert_eq!(as_limited.wait_finished(&run).await["output"], json!(2));
    let r = as_limited.get("/v1/runs").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.body
    );
    for path in [
        format!("/v1/runs/{other_run}"),
        format!("/v1/runs/{other_run}/logs"),
        format!("/v1/runs/{other_run}/steps"),
        format!("/v1/runs/{other_run}/steps/a"),
        format!("/v1/runs?workflow_id={other_wf}"),
    ] {
        let r = as_limited.get(&path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    let r = as_limited
        .post(
            &format!("/v1/workflows/{other_wf}/runs"),
            json!({"input": {}}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = as_limited.get("/v1/workflows").await;
    assert_eq!(r.status, 403, "{}", r.body);

    // Revoked: refused from the next request on.
    let r = app.delete(&format!("/v1/keys/{admin_id}")).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = app.call("GET", "/v1/keys", None, Some(&admin), &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = app.get(&format!("/v1/keys/{admin_id}")).await;
    assert_eq!(r.status, 404, "{}", r.body);

    // Used keys say when.
    let r = app.get("/v1/keys").await;
    let robot = r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|k| k["name"] == "robot")
        .expect("robot")
        .clone();
    assert!(robot["last_used_at"].is_string(), "{robot}");
    assert_eq!(robot["workflows"], json!([mine_wf]));
}

#[tokio::test]
async fn a_rotated_key_works_beside_its_successor_for_the_overlap_and_an_expired_key_is_refused() {
    let app = target().await;
    let (id, old) = make_key(&app, json!({"name": "ci", "role": "editor"})).await;
    let r = app
        .post(&format!("/v1/keys/{id}/rotate"), json!({"overlap": "1h"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new = r.body["key"].as_str().expect("key").to_owned();
    let new_id = r.body["id"].as_str().expect("id").to_owned();
    assert_eq!(r.body["rotated_from"], id.as_str());
    assert_eq!(r.body["role"], "editor");
    for k in [&old, &new] {
        let r = app.call("GET", "/v1/workflows", None, Some(k), &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = app.get(&format!("/v1/keys/{id}")).await;
    assert!(r.body["expires_at"].is_string(), "{}", r.body);
    assert_eq!(r.body["replaced_by"], new_id.as_str(), "{}", r.body);
    // A key rotated away is not rotated again (its successor would end
    // with its overlap).
    let r = app.post(&format!("/v1/keys/{id}/rotate"), json!({})).await;
    assert_eq!(r.status, 409, "{}", r.body);

    // A workflow made with the old key stays its maker's after rotation.
    let r = app
        .call(
            "POST",
            "/v1/workflows",
            Some(json!({"name": "mine", "steps": [{"id": "a", "type": "transform", "value": 1}]})),
            Some(&old),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let wf = r.body["id"].as_str().expect("id").to_owned();
    let edit = json!({"name": "mine v2", "steps": [{"id": "a", "type": "transform", "value": 2}]});
    let r = app
        .call(
            "PUT",
            &format!("/v1/workflows/{wf}"),
            Some(edit.clone()),
            Some(&new),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Another editor may not change it, nor archive it; an admin may.
    let (_, other) = make_key(&app, json!({"name": "other", "role": "editor"})).await;
    for (m, body) in [("PUT", Some(edit.clone())), ("DELETE", None)] {
        let r = app
            .call(m, &format!("/v1/workflows/{wf}"), body, Some(&other), &[])
            .await;
        assert_eq!(r.status, 403, "{m}: {}", r.body);
    }

    // Rotating with no overlap ends the old key at once.
    let r = app
        .post(
            &format!("/v1/keys/{new_id}/rotate"),
            json!({"overlap": "0s"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let newest = r.body["key"].as_str().expect("key").to_owned();
    let r = app
        .call("GET", "/v1/workflows", None, Some(&new), &[])
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = app
        .call("GET", "/v1/workflows", None, Some(&newest), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app
        .post(&format!("/v1/keys/{id}/rotate"), json!({"overlap": "9d"}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);

    // A key made to expire is refused once it has.
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (_, brief) = make_key(
        &app,
        json!({"name": "brief", "role": "viewer", "expires_at": at}),
    )
    .await;
    let r = app.call("GET", "/v1/runs", None, Some(&brief), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = app.call("GET", "/v1/runs", None, Some(&brief), &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
}

#[tokio::test]
async fn the_database_holds_no_key_in_clear() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("weft.db");
    let made = {
        let platform = std::sync::Arc::new(
            weft::platform::Platform::open_with(
                &db,
                weft::platform::PlatformConfig {
                    master_key: Some(weft::adapters::sqlite::MasterKey::generate()),
                    ..Default::default()
                },
            )
            .await
            .expect("open"),
        );
        let (_, owner) = platform
            .create_workspace("t", None)
            .await
            .expect("workspace");
        let app = TestApp::external(&crate::common::serve(platform.router()).await, &owner);
        let (_, made) = make_key(&app, json!({"name": "k", "role": "viewer"})).await;
        vec![owner, made]
    };
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        bytes.extend(std::fs::read(entry.expect("entry").path()).expect("read"));
    }
    for key in made {
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "a key is stored in clear"
        );
    }
}

#[tokio::test]
async fn the_workspace_always_keeps_an_owner_key_that_lasts() {
    // Embedded only: it revokes the workspace's own owner key.
    let app = crate::common::spawn_app().await;
    let owner_id = |body: &Value| {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|k| k["name"] == "owner")
            .and_then(|k| k["id"].as_str())
            .expect("owner key")
            .to_owned()
    };
    let first = owner_id(&app.get("/v1/keys").await.body);
    // An owner key that expires does not count.
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, brief) = make_key(
        &app,
        json!({"name": "brief", "role": "owner", "expires_at": soon}),
    )
    .await;
    let r = app
        .call(
            "DELETE",
            &format!("/v1/keys/{first}"),
            None,
            Some(&brief),
            &[],
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    // Nor does one being rotated away: its successor lasts instead.
    let r = app
        .post(
            &format!("/v1/keys/{first}/rotate"),
            json!({"overlap": "1h"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let (next_id, next) = (
        r.body["id"].as_str().expect("id").to_owned(),
        r.body["key"].as_str().expect("key").to_owned(),
    );
    let r = app.delete(&format!("/v1/keys/{next_id}")).await;
    assert_eq!(r.status, 409, "{}", r.body);

    // Two owners revoking each other at once: one of them stays.
    let (second_id, second) = make_key(&app, json!({"name": "second", "role": "owner"})).await;
    let as_next = TestApp::external(&app.base, &next);
    let as_second = TestApp::external(&app.base, &second);
    let (del_second, del_next) = (
        format!("/v1/keys/{second_id}"),
        format!("/v1/keys/{next_id}"),
    );
    let (a, b) = tokio::join!(as_next.delete(&del_second), as_second.delete(&del_next));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [204, 409], "{} {}", a.body, b.body);

    // Two rotations at once: the earliest end stands.
    let survivor = if a.status == 204 {
        &as_next
    } else {
        &as_second
    };
    let survivor_id = if a.status == 204 {
        &next_id
    } else {
        &second_id
    };
    let rotate = format!("/v1/keys/{survivor_id}/rotate");
    let (x, y) = tokio::join!(
        survivor.post(&rotate, json!({"overlap": "0s"})),
        survivor.post(&rotate, json!({"overlap": "7d"})),
    );
    // (The second may find the key already ended: 409.)
    assert!(x.status == 201 || y.status == 201, "{} {}", x.body, y.body);
    assert!([x.status, y.status].iter().all(|s| *s == 201 || *s == 409));
    let r = survivor.get("/v1/workflows").await;
    assert_eq!(r.status, 401, "{}", r.body);
    // (The scheme's name is case-insensitive.)
    let fresh = [&x, &y]
        .iter()
        .find_map(|r| r.body["key"].as_str())
        .expect("key");
    let r = app
        .call(
            "GET",
            "/v1/workflows",
            None,
            None,
            &[("authorization", &format!("BEARER {fresh}"))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn an_editor_cannot_take_over_an_archived_workflow_by_making_it_again() {
    let app = target().await;
    let (_, mine) = make_key(&app, json!({"name": "e1", "role": "editor"})).await;
    let (_, theirs) = make_key(&app, json!({"name": "e2", "role": "editor"})).await;
    let def = json!({"name": "keep", "steps": [{"id": "a", "type": "transform", "value": 1}]});
    let r = app
        .call("POST", "/v1/workflows", Some(def.clone()), Some(&mine), &[])
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    let r = app
        .call(
            "DELETE",
            &format!("/v1/workflows/{id}"),
            None,
            Some(&mine),
            &[],
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let mut again = def.clone();
    again["id"] = json!(id);
    let r = app
        .call(
            "POST",
            "/v1/workflows",
            Some(again.clone()),
            Some(&theirs),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Its maker may, and stays its maker.
    let r = app
        .call("POST", "/v1/workflows", Some(again), Some(&mine), &[])
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["version"], 2, "{}", r.body);
    let r = app
        .call(
            "PUT",
            &format!("/v1/workflows/{id}"),
            Some(def),
            Some(&theirs),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
}

#[test]
fn every_change_through_the_api_is_named_in_the_audit_log() {
    use weft::api::audit_action;
    let mut names = std::collections::BTreeMap::new();
    for spec in route_table() {
        let action = audit_action(&spec.method, spec.path);
        let changes = spec.method != "GET";
        let exempt = spec.path.ends_with("/runs") || spec.path == "/v1/events";
        assert_eq!(
            action.is_some(),
            changes && !exempt,
            "{} {}",
            spec.method,
            spec.path
        );
        if let Some(a) = action {
            names.insert(format!("{} {}", spec.method, spec.path), a);
        }
    }
    for (route, action) in [
        ("POST /v1/keys", "key.created"),
        ("DELETE /v1/keys/{key_id}", "key.deleted"),
        ("POST /v1/keys/{key_id}/rotate", "key.rotate"),
        ("PUT /v1/secrets/{name}", "secret.updated"),
        (
            "PATCH /v1/workflows/{id}/schedules/{schedule_id}",
            "schedule.updated",
        ),
        ("POST /v1/workflows/{id}/hooks", "hook.created"),
        ("PUT /v1/settings", "settings.updated"),
        (
            "POST /v1/deliveries/{delivery_id}/replay",
            "delivery.replay",
        ),
        (
            "POST /v1/runs/{id}/steps/{step_id}/complete",
            "step.complete",
        ),
        ("DELETE /v1/workflows/{id}", "workflow.deleted"),
    ] {
        assert_eq!(
            names.get(route).map(String::as_str),
            Some(action),
            "{route}"
        );
    }
}

#[tokio::test]
async fn changes_and_secret_reads_are_in_the_audit_log_for_admins() {
    let app = target().await;
    let up = upstream::spawn().await;
    let (key_id, admin) = make_key(&app, json!({"name": "auditor", "role": "admin"})).await;
    let as_admin = TestApp::external(&app.base, &admin);
    let name = format!("audited_{}", key_id.to_lowercase().replace('-', "_"));
    let r = as_admin
        .put(&format!("/v1/secrets/{name}"), json!({"value": "v-123"}))
        .await;
    assert!(r.status < 300, "{}", r.body);
    let wf = as_admin
        .create_workflow(json!({"name": "reads", "steps": [
            {"id": "call", "type": "http", "url": format!("{up}/echo"),
             "headers": {"x-token": format!("{{{{ secrets.{name} }}}}")}}
        ]}))
        .await;
    let run = as_admin.start_run(&wf, json!({})).await;
    assert_eq!(as_admin.wait_finished(&run).await["status"], "COMPLETED");

    let mine = format!("key:{key_id}");
    let r = app.get(&format!("/v1/audit?actor={mine}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let items = r.body["items"].as_array().expect("items").clone();
    let actions: Vec<&str> = items.iter().filter_map(|e| e["action"].as_str()).collect();
    // Newest first; the run's start is not a change.
    assert_eq!(
        actions,
        ["workflow.created", "secret.updated"],
        "{}",
        r.body
    );
    assert_eq!(items[0]["resource"], format!("/v1/workflows/{wf}"));
    assert_eq!(items[1]["resource"], format!("/v1/secrets/{name}"));
    assert!(items[1]["user_agent"].is_string() || items[1]["user_agent"].is_null());
    assert!(items[1]["at"].is_string(), "{}", items[1]);
    if app.platform.is_some() {
        // (Where the server sees the peer; behind AWS's front door, what
        // it forwards.)
        assert_eq!(items[1]["ip"], "127.0.0.1", "{}", items[1]);
    }
    assert!(!r.body.to_string().contains("v-123"), "{}", r.body);

    // The run's read of the secret, by name only.
    let r = app
        .get(&format!(
            "/v1/audit?action=secret.read&actor=run:{run}/call"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["items"][0]["resource"],
        format!("/v1/secrets/{name}"),
        "{}",
        r.body
    );

    // A verb names the resource it acted on; an encoded path is read as
    // the handler read it.
    let (other_id, _) = make_key(&app, json!({"name": "rotated", "role": "viewer"})).await;
    let r = as_admin
        .post(&format!("/v1/keys/{other_id}/rotate"), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let encoded: String = name.chars().map(|c| format!("%{:02X}", c as u32)).collect();
    let r = as_admin.delete(&format!("/v1/secrets/{encoded}")).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = app.get(&format!("/v1/audit?actor={mine}&limit=2")).await;
    assert_eq!(r.body["items"][0]["action"], "secret.deleted", "{}", r.body);
    assert_eq!(
        r.body["items"][0]["resource"],
        format!("/v1/secrets/{name}")
    );
    assert_eq!(r.body["items"][1]["action"], "key.rotate", "{}", r.body);
    assert_eq!(
        r.body["items"][1]["resource"],
        format!("/v1/keys/{other_id}")
    );

    // Pages, and only for admins.
    let r = app.get("/v1/audit?limit=1").await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1));
    let cursor = r.body["next_cursor"].as_str().expect("cursor");
    let next = app.get(&format!("/v1/audit?limit=1&cursor={cursor}")).await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_ne!(next.body["items"][0]["id"], r.body["items"][0]["id"]);
    let (_, viewer) = make_key(&app, json!({"name": "v", "role": "viewer"})).await;
    let r = app.call("GET", "/v1/audit", None, Some(&viewer), &[]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = app.get("/v1/audit?since=yesterday").await;
    assert_eq!(r.status, 400, "{}", r.body);
}

fn header<'a>(r: &'a crate::common::Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_key_over_its_rate_is_told_when_to_come_back_and_others_are_not_held() {
    let app = target().await;
    let (slow_id, slow) = make_key(
        &app,
        json!({"name": "slow", "role": "viewer", "rate_limit": {"per_second": 1, "burst": 3}}),
    )
    .await;
    // Its successor (made now, beside it) shares its allowance.
    let r = app
        .post(
            &format!("/v1/keys/{slow_id}/rotate"),
            json!({"overlap": "1h"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let successor = r.body["key"].as_str().expect("key").to_owned();
    for left in [2, 1, 0] {
        let r = app
            .call("GET", "/v1/runs?limit=1", None, Some(&slow), &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            header(&r, "ratelimit-policy").contains("\"key\";q=3;w=3"),
            "{:?}",
            r.headers
        );
        assert!(
            header(&r, "ratelimit").starts_with(&format!("\"key\";r={left};t=")),
            "{:?}",
            r.headers
        );
    }
    let r = app
        .call("GET", "/v1/runs?limit=1", None, Some(&slow), &[])
        .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["type"], "/problems/rate-limited", "{}", r.body);
    let wait: u64 = header(&r, "retry-after").parse().expect("Retry-After");
    assert!((1..=2).contains(&wait), "{wait}");
    assert!(
        header(&r, "ratelimit").starts_with("\"key\";r=0;"),
        "{:?}",
        r.headers
    );
    let r = app
        .call("GET", "/v1/runs?limit=1", None, Some(&successor), &[])
        .await;
    assert_eq!(r.status, 429, "{}", r.body);
    // Another key of the workspace goes on.
    let r = app.get("/v1/runs?limit=1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // And the slow one may again once the time has passed.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let r = app
        .call("GET", "/v1/runs?limit=1", None, Some(&slow), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A key's own rate can only be lower than the deployment's, and must
    // make sense.
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "bad", "role": "viewer", "rate_limit": {"per_second": 5, "burst": 2}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(crate::common::error_paths(&r.body), vec!["$.rate_limit"]);
}

#[tokio::test]
async fn a_workspace_over_its_rate_is_limited_whichever_key_asks_and_others_are_not() {
    let app = crate::common::spawn_app_with(weft::platform::PlatformConfig {
        rate_limits: weft::domain::RateLimits::parse("workspace=1/4,key=100/100").expect("limits"),
        ..Default::default()
    })
    .await;
    let (_, second) = make_key(&app, json!({"name": "second", "role": "viewer"})).await;
    // (Making the key was the first request.)
    for key in [&second, &app.key, &second] {
        let r = app.call("GET", "/v1/runs", None, Some(key), &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for key in [&app.key, &second] {
        let r = app.call("GET", "/v1/runs", None, Some(key), &[]).await;
        assert_eq!(r.status, 429, "{}", r.body);
        assert!(
            header(&r, "ratelimit").starts_with("\"workspace\";r=0;"),
            "{:?}",
            r.headers
        );
    }
    let theirs = app.other_workspace().await;
    let r = app.call("GET", "/v1/runs", None, Some(&theirs), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A key's own rate stays below the deployment's.
    let r = app
        .call(
            "POST",
            "/v1/keys",
            Some(json!({"name": "fast", "role": "viewer", "rate_limit": {"per_second": 200, "burst": 200}})),
            Some(&theirs),
            &[],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    // Unauthenticated requests are refused before they are counted.
    let r = app
        .call("GET", "/v1/runs", None, Some("weft_nothing"), &[])
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
}
