//! The library example (`examples/embed.rs`) runs: a Pingora user's own
//! `ProxyHttp` with cachet's policy layer, in front of a real origin.

mod support;

#[path = "../examples/embed.rs"]
mod embed;

use std::time::{Duration, Instant};
use support::client::get;
use support::origin::{Origin, Reply};
use support::{free_port, plugin};

#[test]
fn the_embedding_example_caches_through_the_wasm_policy() {
    let origin = Origin::start(|_| Reply::ok("hello").header("Cache-Control", "max-age=60"));
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = embed::build(origin.addr, &plugin("standard")).expect("build the example proxy");
    // Pingora's server runs until the process ends: give it its own thread.
    std::thread::spawn(move || embed::run(listen, proxy));

    let url = format!("http://{listen}/page");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "example proxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        let resp = get(&url);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "hello");
    }
    assert_eq!(
        origin.hits_for("/page"),
        1,
        "the plugin's key and the example's storage cache it"
    );

    // POST is bypassed by the standard plugin: each reaches the origin.
    support::client::send("POST", &url, &[]);
    support::client::send("POST", &url, &[]);
    assert_eq!(origin.hits_for("/page"), 3);
}
