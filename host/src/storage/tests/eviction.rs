use super::super::entry::SlotKey;
use super::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The weight the storage charges for an object with a `len`-byte body and [`meta`].
async fn weight_of(len: usize) -> usize {
    let s = storage(usize::MAX, usize::MAX);
    put(s, &key("/probe", "t"), &vec![0; len]).await;
    s.stats().stored_bytes as usize
}

#[tokio::test]
async fn least_recently_used_objects_go_first() {
    let w = weight_of(1000).await;
    let s = storage(3 * w, 1 << 20);
    for name in ["/a", "/b", "/c"] {
        put(s, &key(name, "t"), &bytes(1000, 0)).await;
    }
    // `/a` becomes the most recently used, so `/b` is now the oldest.
    assert!(get(s, &key("/a", "t")).await.is_some());
    put(s, &key("/d", "t"), &bytes(1000, 0)).await;
    put(s, &key("/e", "t"), &bytes(1000, 0)).await;

    let present = |name| {
        s.index
            .read()
            .complete("t", &SlotKey::of(&key(name, "t")))
            .is_some()
    };
    assert!(!present("/b") && !present("/c"));
    assert!(present("/a") && present("/d") && present("/e"));
    let stats = s.stats();
    assert_eq!(stats.evictions, 2);
    assert_eq!(stats.stored_bytes, 3 * w as u64);
    assert_eq!(stats.partitions[0].evictions, 2);
    s.index.read().assert_consistent();
}

#[tokio::test]
async fn budget_holds_across_many_mixed_inserts() {
    let budget = 64 * 1024;
    let s = storage(budget, 1 << 20);
    s.set_partition_budget("small", Some(16 * 1024));
    let mut seed = 12345u64;
    for i in 0..2000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (seed >> 33) as usize % 9000;
        let tenant = ["big", "small", "other"][i % 3];
        put(
            s,
            &key(&format!("/{}", seed % 300), tenant),
            &bytes(len, i as u8),
        )
        .await;
        let stats = s.stats();
        assert!(stats.stored_bytes <= budget as u64);
        let small = stats.partitions.iter().find(|p| p.name == "small").unwrap();
        assert!(small.stored_bytes <= 16 * 1024);
    }
    s.index.read().assert_consistent();
    let stats = s.stats();
    assert!(stats.evictions > 0);
    let sum: u64 = stats.partitions.iter().map(|p| p.stored_bytes).sum();
    assert_eq!(sum, stats.stored_bytes);
}

/// A sampler reading the counters without the lock never sees the budget exceeded, even while
/// several writers evict concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_holds_under_concurrent_writers() {
    let budget = 48 * 1024;
    let s = storage(budget, 1 << 20);
    s.set_partition_budget("a", Some(20 * 1024));
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let peak: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let sampler = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let stored = s.counters.stored_bytes();
            peak.fetch_max(stored, Ordering::Relaxed);
        }
    });
    let writers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(async move {
                for i in 0..1000usize {
                    let len = (i * 7919 + w * 104729) % 7000;
                    let tenant = if i % 2 == 0 { "a" } else { "b" };
                    let k = key(&format!("/{}", (i * 31 + w) % 97), tenant);
                    put_chunked(s, &k, &bytes(len, i as u8), 1500).await;
                    let _ = get(s, &key(&format!("/{}", i % 97), "b")).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(peak.load(Ordering::Relaxed) <= budget as u64);
    assert!(peak.load(Ordering::Relaxed) > (budget / 2) as u64);
    s.index.read().assert_consistent();
}

#[tokio::test]
async fn partition_budget_is_enforced_inside_the_global_one() {
    let w = weight_of(1000).await;
    let s = storage(100 * w, 1 << 20);
    s.set_partition_budget("a", Some(2 * w));
    for i in 0..5 {
        put(s, &key(&format!("/{i}"), "a"), &bytes(1000, 0)).await;
        put(s, &key(&format!("/{i}"), "b"), &bytes(1000, 0)).await;
    }
    let stats = s.stats();
    let (a, b) = (&stats.partitions[0], &stats.partitions[1]);
    assert_eq!((a.name.as_str(), a.objects, a.evictions), ("a", 2, 3));
    assert_eq!(a.budget_bytes, Some(2 * w as u64));
    assert_eq!((b.name.as_str(), b.objects, b.evictions), ("b", 5, 0));
    assert_eq!(b.budget_bytes, None);
    assert!(get(s, &key("/4", "a")).await.is_some());
    assert!(get(s, &key("/2", "a")).await.is_none());

    // Shrinking evicts at once, oldest first; lifting the budget stops enforcing it.
    s.set_partition_budget("a", Some(w));
    assert!(s
        .index
        .read()
        .complete("a", &SlotKey::of(&key("/4", "a")))
        .is_some());
    assert_eq!(s.stats().partitions[0].objects, 1);
    s.set_partition_budget("a", None);
    for i in 0..3 {
        put(s, &key(&format!("/x{i}"), "a"), &bytes(1000, 0)).await;
    }
    assert_eq!(s.stats().partitions[0].objects, 4);
    s.index.read().assert_consistent();

    // A budget given to a partition that already holds objects takes effect at once.
    s.set_partition_budget("b", Some(3 * w));
    assert_eq!(s.stats().partitions[1].objects, 3);
    s.index.read().assert_consistent();
}

#[tokio::test]
async fn shrinking_the_global_budget_evicts_at_once() {
    let w = weight_of(500).await;
    let s = storage(10 * w, 1 << 20);
    for i in 0..10 {
        put(s, &key(&format!("/{i}"), "t"), &bytes(500, 0)).await;
    }
    s.set_global_budget(4 * w);
    let stats = s.stats();
    assert_eq!(stats.objects, 4);
    assert_eq!(stats.budget_bytes, 4 * w as u64);
    assert!(get(s, &key("/9", "t")).await.is_some());
    assert!(get(s, &key("/5", "t")).await.is_none());
    s.index.read().assert_consistent();
}

#[tokio::test]
async fn object_larger_than_its_budget_is_rejected_without_evicting() {
    let w = weight_of(1000).await;
    let s = storage(3 * w, 1 << 20);
    put(s, &key("/small", "t"), &bytes(1000, 0)).await;
    put(s, &key("/huge", "t"), &bytes(4 * w, 0)).await;
    assert!(get(s, &key("/huge", "t")).await.is_none());
    assert!(get(s, &key("/small", "t")).await.is_some());
    let stats = s.stats();
    assert_eq!((stats.rejected_oversize, stats.evictions), (1, 0));
}

/// Fills in progress hold at most the global budget in bodies they may still store: one
/// that would go past it stops buffering (it is not stored), and whatever the fills held is
/// given back when they end, stored or not.
#[tokio::test]
async fn fills_in_progress_are_bounded_by_their_budget() {
    let budget = 1 << 20;
    let s = storage(budget, 1 << 20);
    s.set_fill_budget(budget);
    let part = vec![7u8; 100 * 1024];
    let keys: Vec<CacheKey> = (0..3).map(|i| key(&format!("/fill/{i}"), "t")).collect();
    let mut fills = Vec::new();
    for k in &keys {
        fills.push(miss(s, k).await);
    }
    // 400 KiB each, side by side: one of them goes past the budget.
    for _ in 0..4 {
        for fill in fills.iter_mut() {
            fill.write_body(part.clone().into(), false).await.unwrap();
        }
        // A fill that gave up still keeps a little for its readers.
        assert!(s.filling_bytes() <= budget + crate::storage::stream::PRESSED_LAG);
    }
    assert!(s.filling_bytes() > budget / 2);
    for mut fill in fills {
        fill.write_body(Default::default(), true).await.unwrap();
        fill.finish().await.unwrap();
    }
    assert_eq!(s.filling_bytes(), 0);
    let stored: Vec<bool> = futures::future::join_all(keys.iter().map(|k| get(s, k)))
        .await
        .iter()
        .map(Option::is_some)
        .collect();
    // The first fills stored theirs; one that went past the budget was not stored (what it
    // still keeps for readers counts, so the next one may not fit either).
    assert_eq!((stored[0], stored[2]), (true, false), "{stored:?}");
    // A fill dropped half way (its origin failed) gives back what it held too.
    let mut dropped = miss(s, &key("/dropped", "t")).await;
    dropped
        .write_body(part.clone().into(), false)
        .await
        .unwrap();
    assert!(s.filling_bytes() > 0);
    drop(dropped);
    assert_eq!(s.filling_bytes(), 0);
}

/// A fill that will not be stored still keeps chunks for readers that fall behind (up to
/// the lag bound, 8 MiB at least): that counts against the same budget, and once it is
/// spent such a fill keeps 1 MiB at most. Fills abandoned by their clients (Pingora goes
/// on filling) cannot pin the usual bound's worth of memory each.
#[tokio::test]
async fn fills_not_stored_keep_for_readers_only_what_the_budget_allows() {
    let budget = 1 << 20;
    let s = storage(budget, 256 * 1024);
    s.set_fill_budget(budget);
    let part = vec![3u8; 64 * 1024];
    let mut stored = miss(s, &key("/stored", "t")).await;
    for _ in 0..2 {
        stored.write_body(part.clone().into(), false).await.unwrap();
    }
    // Over the object size: not stored, but its stream keeps what readers may still need.
    // Its own client's reader stops reading at once (the client left).
    let unstored_key = key("/unstored", "t");
    let mut unstored = miss(s, &unstored_key).await;
    let (_, mut gone) = s
        .lookup_streaming_write(&unstored_key, unstored.streaming_write_tag(), &span())
        .await
        .unwrap()
        .unwrap();
    for _ in 0..40 {
        unstored
            .write_body(part.clone().into(), false)
            .await
            .unwrap();
        assert!(
            s.filling_bytes() <= budget + crate::storage::stream::PRESSED_LAG + part.len(),
            "{} held with a budget of {budget}",
            s.filling_bytes()
        );
    }
    // 2.5 MiB behind, well within the usual 8 MiB lag floor: it was cut off because the
    // budget was spent.
    assert!(gone.read_body().await.is_err());
    drop(unstored);
    stored.write_body(part.clone().into(), false).await.unwrap();
    stored.write_body(Default::default(), true).await.unwrap();
    stored.finish().await.unwrap();
    assert_eq!(s.filling_bytes(), 0);
    assert!(get(s, &key("/stored", "t")).await.is_some());
}
