use std::collections::BTreeMap;

use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use shoal_mesh::placement::Warm;

use super::{clone_parts, is_retriable, with_outstanding};

fn warm(node: u64, release: u64, in_flight: u64) -> Warm {
    Warm {
        node,
        release,
        in_flight,
    }
}

#[test]
fn own_requests_raise_and_add_warm_entries() {
    let gossip = [warm(1, 3, 2), warm(2, 3, 9)];
    let mut outstanding = BTreeMap::new();
    outstanding.insert((1, "api".to_owned()), 5);
    outstanding.insert((2, "api".to_owned()), 4);
    outstanding.insert((3, "api".to_owned()), 7);
    outstanding.insert((4, "other".to_owned()), 1);
    let mut merged = with_outstanding(&gossip, &outstanding, "api", 3);
    merged.sort_by_key(|w| w.node);
    assert_eq!(
        merged,
        vec![warm(1, 3, 5), warm(2, 3, 9), warm(3, 3, 7)],
        "raised to this node's own count, never lowered; node 3 is starting the app"
    );
    assert_eq!(
        with_outstanding(&gossip, &BTreeMap::new(), "api", 3),
        gossip
    );
}

#[test]
fn only_bodiless_idempotent_requests_are_retried() {
    let get = Request::get("/")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    assert!(is_retriable(&get));
    let post = Request::post("/")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    assert!(!is_retriable(&post), "POST is not idempotent");
    let put = Request::put("/")
        .body(Full::new(bytes::Bytes::from_static(b"x")))
        .unwrap();
    assert!(!is_retriable(&put), "its body is gone once sent");
    let websocket = Request::get("/ws")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    assert!(!is_retriable(&websocket));
    let streamed = Request::get("/")
        .body(Full::new(bytes::Bytes::from_static(b"x")).boxed())
        .unwrap();
    assert!(!is_retriable(&streamed), "a GET with a body is not resent");
}

#[test]
fn a_cloned_head_keeps_method_uri_and_headers() {
    let request = Request::put("/items/1?x=2")
        .header("x-one", "1")
        .header("accept", "a")
        .header("accept", "b")
        .body(())
        .unwrap();
    let (parts, ()) = request.into_parts();
    let copy = clone_parts(&parts);
    assert_eq!(copy.method, parts.method);
    assert_eq!(copy.uri, parts.uri);
    assert_eq!(copy.headers, parts.headers);
}
