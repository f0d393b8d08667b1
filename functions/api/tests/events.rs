//! The API's sample events (events/api-*.json) are HTTP API requests the
//! router answers as expected once lambda_http has turned them into HTTP.

use std::path::Path;

use lambda_http::request::LambdaRequest;
use tower::ServiceExt as _;
use weft::platform::Platform;

#[tokio::test]
async fn api_sample_events_reach_the_router() {
    let platform = Platform::open(Path::new(":memory:")).await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events");
    let expected = [
        ("api-health.json", 200),
        ("api-list-runs-unauthorized.json", 401),
    ];
    for (file, status) in expected {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let event: LambdaRequest = serde_json::from_str(&text).unwrap();
        let req: lambda_http::Request = event.into();
        let res = platform.router().oneshot(req).await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{file}");
    }
    let listed = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("api-")
        })
        .count();
    assert_eq!(
        listed,
        expected.len(),
        "every API event has an expectation here"
    );
}
