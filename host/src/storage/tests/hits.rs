use super::super::entry::SlotKey;
use super::*;

#[tokio::test]
async fn hit_serves_the_stored_buffer_without_copying() {
    let s = storage(1 << 20, 1 << 20);
    let k = key("/a", "t");
    let body = bytes(10_000, 1);
    put_chunked(s, &k, &body, 3000).await;

    let stored = s
        .index
        .read()
        .complete("t", &SlotKey::of(&k))
        .unwrap()
        .body
        .clone();
    let (_, mut first) = get(s, &k).await.unwrap();
    let (_, mut second) = get(s, &k).await.unwrap();
    let a = first.read_body().await.unwrap().unwrap();
    let b = second.read_body().await.unwrap().unwrap();
    assert_eq!(&a[..], &body[..]);
    assert_eq!(a.as_ptr(), stored.as_ptr());
    assert_eq!(b.as_ptr(), stored.as_ptr());
    assert!(first.read_body().await.unwrap().is_none());
    assert!(first.can_seek());
}

#[tokio::test]
async fn ranges_are_served_by_seeking_slices() {
    let s = storage(1 << 20, 1 << 20);
    let k = key("/range", "t");
    let body = bytes(1000, 2);
    put(s, &k, &body).await;
    let (_, mut hit) = get(s, &k).await.unwrap();
    let base = s
        .index
        .read()
        .complete("t", &SlotKey::of(&k))
        .unwrap()
        .body
        .as_ptr();

    // Single range: pingora passes an exclusive end.
    hit.seek(10, Some(20)).unwrap();
    let part = hit.read_body().await.unwrap().unwrap();
    assert_eq!(&part[..], &body[10..20]);
    assert_eq!(part.as_ptr(), base.wrapping_add(10));
    assert!(hit.read_body().await.unwrap().is_none());

    // Multipart: each seek rewinds the same handler.
    assert!(hit.can_seek_multipart());
    hit.seek_multipart(500, Some(510)).unwrap();
    assert_eq!(read_all(&mut hit).await.unwrap(), &body[500..510]);
    hit.seek_multipart(0, Some(3)).unwrap();
    assert_eq!(read_all(&mut hit).await.unwrap(), &body[0..3]);

    // Open and overlong ends are clamped; a start past the body is an error.
    hit.seek(990, None).unwrap();
    assert_eq!(read_all(&mut hit).await.unwrap(), &body[990..]);
    hit.seek(995, Some(5000)).unwrap();
    assert_eq!(read_all(&mut hit).await.unwrap(), &body[995..]);
    assert!(hit.seek(1000, None).is_err());
}

#[tokio::test]
async fn empty_body_is_stored_and_served() {
    let s = storage(1 << 20, 1 << 20);
    let k = key("/empty", "t");
    put(s, &k, b"").await;
    assert_eq!(body_of(s, &k).await.unwrap(), b"");
}

#[tokio::test]
async fn meta_comes_back_exactly_as_stored() {
    let s = storage(1 << 20, 1 << 20);

    // A first fill: rebuilt through the public constructor.
    // Stated lengths: a body without one is stored with it (the test below).
    let k = key("/fresh", "t");
    let mut original = meta();
    original.set_variance([7; 16]);
    original
        .response_header_mut()
        .insert_header("content-length", "1")
        .unwrap();
    let mut w = s.get_miss_handler(&k, &original, &span()).await.unwrap();
    w.write_body(b"x".to_vec().into(), true).await.unwrap();
    w.finish().await.unwrap();
    let (got, _) = get(s, &k).await.unwrap();
    assert_eq!(got.serialize().unwrap(), original.serialize().unwrap());

    // A revalidated meta (`updated` later than `created`) keeps its encoded internals.
    let k = key("/revalidated", "t");
    let created = SystemTime::now() - Duration::from_secs(600);
    let mut header = ResponseHeader::build_no_case(200, None).unwrap();
    header.append_header("etag", "\"v1\"").unwrap();
    header.append_header("content-length", "1").unwrap();
    let mut revalidated = CacheMeta::new(created, created, 5, 6, header);
    revalidated.update_freshness(SystemTime::now() + Duration::from_secs(60), 7, 8);
    revalidated.set_epoch_override(created + Duration::from_secs(1));
    let mut w = s.get_miss_handler(&k, &revalidated, &span()).await.unwrap();
    w.write_body(b"y".to_vec().into(), true).await.unwrap();
    w.finish().await.unwrap();
    let (got, _) = get(s, &k).await.unwrap();
    assert_ne!(got.updated(), got.created());
    assert_eq!(got.updated(), revalidated.updated());
    assert_eq!(got.serialize().unwrap(), revalidated.serialize().unwrap());
    assert_eq!(got.headers().get("etag").unwrap(), "\"v1\"");
}

#[tokio::test]
async fn a_body_stored_without_a_length_is_stored_with_the_length_it_had() {
    let s = storage(1 << 20, 1 << 20);
    let k = key("/unframed", "t");
    put_chunked(s, &k, b"abcdefg", 3).await;
    let (got, _) = get(s, &k).await.unwrap();
    assert_eq!(got.headers().get("content-length").unwrap(), "7");
    assert_eq!(got.headers().get("content-type").unwrap(), "text/plain");

    // A status without content gets none.
    let k = key("/no-content", "t");
    let header = ResponseHeader::build_no_case(204, None).unwrap();
    let now = SystemTime::now();
    let empty = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
    let mut w = s.get_miss_handler(&k, &empty, &span()).await.unwrap();
    w.write_body(bytes::Bytes::new(), true).await.unwrap();
    w.finish().await.unwrap();
    let (got, _) = get(s, &k).await.unwrap();
    assert!(got.headers().get("content-length").is_none());
}

#[tokio::test]
async fn a_parsed_header_is_kept_by_value_without_its_name_case() {
    let s = storage(1 << 20, 1 << 20);
    let k = key("/case", "t");
    let mut header = ResponseHeader::build(200, None).unwrap();
    header.append_header("X-Mixed-Case", "a").unwrap();
    header.append_header("X-Mixed-Case", "b").unwrap();
    header.append_header("Content-Length", "1").unwrap();
    header.set_reason_phrase(Some("Fine")).unwrap();
    let now = SystemTime::now();
    let original = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
    let mut w = s.get_miss_handler(&k, &original, &span()).await.unwrap();
    w.write_body(b"x".to_vec().into(), true).await.unwrap();
    w.finish().await.unwrap();

    let (got, _) = get(s, &k).await.unwrap();
    let (got, original) = (got.response_header(), original.response_header());
    assert_eq!(got.headers, original.headers);
    assert_eq!(got.status, original.status);
    assert_eq!(got.get_reason_phrase(), Some("Fine"));
    assert!(
        !got.has_case(),
        "the stored header keeps no second map of name spellings"
    );
    // Own bytes, not a view of the buffer the header was parsed from.
    let stored = got.headers.get("x-mixed-case").unwrap().as_bytes().as_ptr();
    let parsed = original
        .headers
        .get("x-mixed-case")
        .unwrap()
        .as_bytes()
        .as_ptr();
    assert_ne!(stored, parsed);
}

#[tokio::test]
async fn tenants_and_variants_are_separate_objects() {
    let s = storage(1 << 20, 1 << 20);
    put(s, &key("/p", "a"), b"tenant a").await;
    put(s, &key("/p", "b"), b"tenant b").await;
    let mut variant = key("/p", "a");
    variant.set_variance_key([1; 16]);
    put(s, &variant, b"variant").await;

    assert_eq!(body_of(s, &key("/p", "a")).await.unwrap(), b"tenant a");
    assert_eq!(body_of(s, &key("/p", "b")).await.unwrap(), b"tenant b");
    assert_eq!(body_of(s, &variant).await.unwrap(), b"variant");
    assert!(get(s, &key("/p", "c")).await.is_none());
}

#[tokio::test]
async fn a_new_fill_replaces_the_stored_object() {
    let s = storage(1 << 20, 1 << 20);
    let k = key("/r", "t");
    put(s, &k, b"old").await;
    put(s, &k, b"newer").await;
    assert_eq!(body_of(s, &k).await.unwrap(), b"newer");
    let stats = s.stats();
    assert_eq!(stats.objects, 1);
    assert_eq!(stats.inserts, 2);
    assert_eq!(stats.evictions, 0);
}

/// The object limit is on the body: one exactly at `max_object_bytes`, sent in small reads,
/// is stored (each read's bookkeeping used to count against the limit, so such a body was
/// buffered whole, then dropped, on every request); one byte more is not.
#[tokio::test]
async fn a_body_at_the_object_limit_is_stored_however_it_arrives() {
    let limit = 64 << 10;
    let s = storage(8 << 20, limit);
    let at_limit = key("/at-limit", "t");
    put_chunked(s, &at_limit, &bytes(limit, 1), 512).await;
    assert_eq!(body_of(s, &at_limit).await, Some(bytes(limit, 1)));
    let over = key("/over", "t");
    put_chunked(s, &over, &bytes(limit + 1, 2), 512).await;
    assert_eq!(body_of(s, &over).await, None);
}
