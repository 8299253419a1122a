use super::super::entry::SlotKey;
use super::*;
use pingora_cache::storage::{PurgeOutcome, PurgeTarget, PurgeType};
use pingora_cache::{CacheEntryId, CacheEntryKey};

#[tokio::test]
async fn purge_removes_active_and_exact_targets() {
    let s = storage(1 << 20, 1 << 20);
    let k = key("/p", "t");
    let compact = k.to_compact();
    let trace = span();
    let purge = |target| s.purge(target, PurgeType::Invalidation, &trace);

    put(s, &k, b"body").await;
    assert_eq!(
        purge(PurgeTarget::Active(&compact)).await.unwrap(),
        PurgeOutcome::Purged(None)
    );
    assert!(get(s, &k).await.is_none());
    assert_eq!(
        purge(PurgeTarget::Active(&compact)).await.unwrap(),
        PurgeOutcome::NotFound
    );

    put(s, &k, b"body").await;
    // This storage assigns no entry IDs, so an identified target matches nothing.
    let identified = CacheEntryKey::identified(compact.clone(), CacheEntryId::new(1));
    assert_eq!(
        purge(PurgeTarget::Exact(&identified)).await.unwrap(),
        PurgeOutcome::NotFound
    );
    let exact = CacheEntryKey::key_only(compact.clone());
    assert_eq!(
        purge(PurgeTarget::Exact(&exact)).await.unwrap(),
        PurgeOutcome::Purged(None)
    );
    assert!(get(s, &k).await.is_none());

    let stats = s.stats();
    assert_eq!((stats.objects, stats.stored_bytes), (0, 0));
    assert_eq!(stats.evictions, 0);
    s.index.read().assert_consistent();
}

#[tokio::test]
async fn expire_keeps_the_body_but_makes_it_stale() {
    let s = storage(1 << 20, 1 << 20);
    let k = key("/e", "t");
    let compact = k.to_compact();
    put(s, &k, b"stale body").await;
    let before = s
        .index
        .read()
        .complete("t", &SlotKey::of(&k))
        .unwrap()
        .body
        .as_ptr();
    let stored_bytes = s.stats().stored_bytes;

    assert_eq!(
        s.expire(PurgeTarget::Active(&compact), &span())
            .await
            .unwrap(),
        PurgeOutcome::Expired
    );
    let (meta, mut hit) = get(s, &k).await.unwrap();
    let now = SystemTime::now();
    assert!(!meta.is_fresh(now));
    // The serve-stale windows now run from the expiry.
    assert!(meta.serve_stale_while_revalidate(now));
    let body = hit.read_body().await.unwrap().unwrap();
    assert_eq!((&body[..], body.as_ptr()), (&b"stale body"[..], before));
    assert_eq!(s.stats().stored_bytes, stored_bytes);

    assert_eq!(
        s.expire(
            PurgeTarget::Active(&key("/none", "t").to_compact()),
            &span()
        )
        .await
        .unwrap(),
        PurgeOutcome::NotFound
    );
    s.index.read().assert_consistent();
}

#[tokio::test]
async fn update_meta_on_a_vanished_object_returns_false() {
    let s = storage(1 << 20, 1 << 20);
    let k = key("/u", "t");
    assert!(!s.update_meta(&k, &meta(), &span()).await.unwrap());

    put(s, &k, b"body").await;
    let (stored, _) = get(s, &k).await.unwrap();
    let now = SystemTime::now();
    let revalidation = |created: SystemTime| {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("etag", "\"v2\"").unwrap();
        CacheMeta::new(now + Duration::from_secs(9), created, 0, 0, header)
    };
    // A 304 about another object (one that had the key before this fill) leaves it alone:
    // its headers would describe another body.
    let about_another = revalidation(stored.created() - Duration::from_secs(1));
    assert!(!s.update_meta(&k, &about_another, &span()).await.unwrap());
    let (unchanged, _) = get(s, &k).await.unwrap();
    assert_eq!(unchanged.headers().get("etag"), None);
    // pingora keeps the looked-up object's `created` in the merged meta.
    let revalidated = revalidation(stored.created());
    assert!(s.update_meta(&k, &revalidated, &span()).await.unwrap());
    let (meta, mut hit) = get(s, &k).await.unwrap();
    assert_eq!(meta.headers().get("etag").unwrap(), "\"v2\"");
    assert_eq!(read_all(&mut hit).await.unwrap(), b"body");

    let compact = k.to_compact();
    s.purge(
        PurgeTarget::Active(&compact),
        PurgeType::Invalidation,
        &span(),
    )
    .await
    .unwrap();
    assert!(!s.update_meta(&k, &revalidated, &span()).await.unwrap());
    s.index.read().assert_consistent();
}

/// A meta carrying purge tags, fresh for an hour.
fn tagged_meta(tags: &str) -> CacheMeta {
    let mut header = ResponseHeader::build(200, None).unwrap();
    header
        .append_header(crate::storage::TAGS_HEADER, tags)
        .unwrap();
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, header)
}

async fn put_tagged(s: &'static MemoryStorage, key: &CacheKey, tags: &str) {
    let mut handler = s
        .get_miss_handler(key, &tagged_meta(tags), &span())
        .await
        .unwrap();
    handler
        .write_body(b"body".to_vec().into(), true)
        .await
        .unwrap();
    handler.finish().await.unwrap();
}

/// Each tag is held twice beyond its header field (the object's list and the tag index),
/// with map and set entries: the budget is charged for them, or objects with many long tags
/// would hold several times `max_bytes`.
#[tokio::test]
async fn purge_tags_are_charged_against_the_budget() {
    let s = storage(1 << 20, 1 << 20);
    put_tagged(s, &key("/plain", "t"), "x").await;
    let one_tag = s.stats().stored_bytes;
    let tags: Vec<String> = (0..64)
        .map(|i| format!("{i:03}{}", "t".repeat(253)))
        .collect();
    put_tagged(s, &key("/tagged", "t"), &tags.join(" ")).await;
    let many = s.stats().stored_bytes - one_tag;
    let header_bytes = (tags.join(" ").len() - 1) as u64;
    assert!(
        many >= one_tag + header_bytes + 64 * (2 * 256 + 256),
        "{many} bytes charged for 64 tags of 256 bytes"
    );
}

#[tokio::test]
async fn purge_by_tag_removes_or_expires_tagged_objects_of_one_partition() {
    let s = storage(1 << 20, 1 << 20);
    let (a, b, c) = (key("/a", "t"), key("/b", "t"), key("/c", "t"));
    let other = key("/a", "u");
    put_tagged(s, &a, "x shared").await;
    put_tagged(s, &b, "y shared").await;
    put_tagged(s, &c, "z").await;
    put_tagged(s, &other, "x shared").await;

    assert_eq!(s.purge_tags("t", &["x", "y"], false), 2);
    assert!(get(s, &a).await.is_none());
    assert!(get(s, &b).await.is_none());
    assert!(get(s, &c).await.is_some());
    assert!(
        get(s, &other).await.is_some(),
        "other partitions are untouched"
    );
    assert_eq!(s.purge_tags("t", &["x"], false), 0, "the index forgot them");

    assert_eq!(s.purge_tags("u", &["shared"], true), 1);
    let (meta, _) = get(s, &other).await.expect("soft purge keeps the object");
    assert!(!meta.is_fresh(SystemTime::now() + Duration::from_millis(1)));
}

#[tokio::test]
async fn replacing_an_object_replaces_its_tags() {
    let s = storage(1 << 20, 1 << 20);
    let k = key("/a", "t");
    put_tagged(s, &k, "old").await;
    put_tagged(s, &k, "new").await;
    assert_eq!(s.purge_tags("t", &["old"], false), 0);
    assert_eq!(s.purge_tags("t", &["new"], false), 1);
    assert!(!s.purge_key(&k));
}

/// A purge that lands after the proxy checked "purged while fetched" but before the fill's
/// write is registered finds no write to cancel: the write, once registered, must still see it
/// (a slow `vary` hook runs in that gap).
#[tokio::test]
async fn a_purge_before_the_fill_registers_its_write_keeps_it_out() {
    use pingora_cache::key::CacheHashKey;
    let s = storage(1 << 20, 1 << 20);
    let k = key("/raced", "t");
    put(s, &k, b"old").await;
    let watch = s.watch_fill("t", k.primary_bin());
    // As the proxy purges (PURGE, or invalidation after an unsafe method).
    assert!(s.purge_key(&k));
    put(s, &k, b"fetched before the purge").await;
    assert_eq!(body_of(s, &k).await, None);
    drop(watch);
    // With no fill of the key in flight, the purge concerns no later one.
    put(s, &k, b"new").await;
    assert_eq!(body_of(s, &k).await.as_deref(), Some(&b"new"[..]));
    s.index.read().assert_consistent();
}
