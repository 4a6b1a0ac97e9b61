//! Shutdown order: readiness turns false first and stays observable on the admin listener while
//! the public listener drains its in-flight requests.

use super::*;

#[tokio::test]
async fn readyz_answers_503_while_in_flight_requests_drain() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let (public, admin) = (h.server.public, h.server.admin.unwrap());
    let http = h.http.clone();
    // /public/slow is proxied to the echo's slow handler (800 ms).
    let slow = format!("http://{public}/public/slow");
    let inflight = tokio::spawn({
        let http = http.clone();
        async move { http.get(slow).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(h.server.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = http
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .expect("the admin listener still answers while the public one drains");
    assert_eq!(ready.status(), 503, "not ready once shutdown began");
    assert!(
        tokio::net::TcpStream::connect(public).await.is_err(),
        "the public listener no longer accepts"
    );
    assert_eq!(
        inflight.await.unwrap().unwrap(),
        200,
        "in-flight request finished"
    );
    stopping.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener is closed once everything drained"
    );
}
