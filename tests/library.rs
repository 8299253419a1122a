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
    let origin = Origin::start(|seen| {
        let reply = Reply::ok("hello").header("Cache-Control", "max-age=60");
        match seen.url.as_str() {
            "/varies" => reply.header("Vary", "Accept-Language"),
            "/login" => reply.header("Set-Cookie", "session=alice"),
            _ => reply,
        }
    });
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

    // What the example does not handle is not cached: an authorized request, an answer
    // that varies or sets a cookie.
    for (path, headers) in [
        ("/page", &[("Authorization", "Bearer alice")][..]),
        ("/varies", &[("Accept-Language", "fr")][..]),
        ("/login", &[][..]),
    ] {
        let url = format!("http://{listen}{path}");
        let before = origin.hits_for(path);
        support::client::send("GET", &url, headers);
        support::client::send("GET", &url, headers);
        assert_eq!(origin.hits_for(path), before + 2, "{path} {headers:?}");
    }

    // POST is bypassed by the standard plugin: each reaches the origin.
    let before = origin.hits_for("/page");
    support::client::send("POST", &url, &[]);
    support::client::send("POST", &url, &[]);
    assert_eq!(origin.hits_for("/page"), before + 2);
}
