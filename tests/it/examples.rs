//! The workflows under examples/, run end to end against the provider test
//! server with scripted model replies.

use crate::common::providers::{calls, script, setup};
use crate::common::step;
use serde_json::{Value, json};

fn example(name: &str) -> Value {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example file");
    serde_json::from_str(&text).expect("example JSON")
}

#[tokio::test]
async fn support_ticket_triage_holds_urgent_tickets_for_a_person() {
    let (app, base) = setup(true).await;
    script(
        &base,
        "Subject: Charged twice",
        r#"{"category": "billing", "urgency": "urgent", "summary": "The customer was charged twice."}"#,
    )
    .await;
    script(
        &base,
        "Subject: Export",
        r#"```json
{"category": "how_to", "urgency": "low", "summary": "The customer asks how to export invoices."}
```"#,
    )
    .await;
    let wf = app
        .create_workflow(example("support-ticket-triage.json"))
        .await;

    let urgent = app
        .start_run(
            &wf,
            json!({"subject": "Charged twice", "body": "My card was billed two times.", "customer": "Dana"}),
        )
        .await;
    let waiting = app
        .wait_run(&urgent, |r| {
            r["status"] == "WAITING" || r["status"] == "FAILED"
        })
        .await;
    assert_eq!(waiting["status"], "WAITING", "{waiting}");
    assert_eq!(step(&waiting, "escalate")["status"], "waiting");
    let r = app
        .post(
            &format!("/v1/runs/{urgent}/steps/escalate/complete"),
            json!({"output": {"approved": true}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = app.wait_finished(&urgent).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let result = &step(&done, "result")["output"];
    assert_eq!(result["category"], "billing");
    assert_eq!(result["urgency"], "urgent");
    assert_eq!(
        result["reply"],
        "echo: Write a short, friendly reply to Dana about: The customer was charged twice."
    );
    // Two gpt-4o-mini calls at 1000 + 500 tokens each.
    let cost = result["cost_usd"].as_f64().unwrap_or_default();
    assert!((cost - 0.0009).abs() < 1e-9, "{result}");

    let routine = app
        .start_run(
            &wf,
            json!({"subject": "Export", "body": "How do I export my invoices?"}),
        )
        .await;
    let done = app.wait_finished(&routine).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(step(&done, "escalate")["status"], "skipped");
    let result = &step(&done, "result")["output"];
    assert_eq!(result["category"], "how_to");
    assert!(
        result["reply"]
            .as_str()
            .is_some_and(|r| r.contains("to the customer about")),
        "{result}"
    );
    assert_eq!(calls(&base).await.len(), 4);
}

#[tokio::test]
async fn lead_scoring_keeps_the_hot_leads() {
    let (app, base) = setup(true).await;
    for (name, score) in [
        ("Acme Ledgers", 91),
        ("Birch Bakery", 22),
        ("Cobalt CPA", 74),
    ] {
        script(
            &base,
            name,
            &json!({"score": score, "reason": format!("{name} scored {score}")}).to_string(),
        )
        .await;
    }
    let wf = app.create_workflow(example("lead-scoring.json")).await;
    let leads = json!([
        {"name": "Acme Ledgers", "employees": 40},
        {"name": "Birch Bakery", "employees": 3},
        {"name": "Cobalt CPA", "employees": 12}
    ]);
    let run = app.start_run(&wf, json!({"leads": leads})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let scored = &step(&done, "score")["output"];
    assert_eq!(scored[1]["name"], "Birch Bakery");
    assert_eq!(scored[1]["score"], 22);
    let hot: Vec<&str> = step(&done, "hot")["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(hot, vec!["Acme Ledgers", "Cobalt CPA"]);
    assert_eq!(done["usage"]["calls"], 3);
}
