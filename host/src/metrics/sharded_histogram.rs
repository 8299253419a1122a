//! A Prometheus histogram whose observations go to the observing thread's own shard, summed
//! only when scraped.
//!
//! Why: `prometheus::Histogram` counts every observation on one set of atomics. The plugin
//! hook histogram is observed on every call by every worker thread, and with two threads
//! calling one pool those shared cache lines took 7 % of the samples against 0.8 % with
//! one (`plugin_calls` bench, `docs/policy-costs.md`). Here each thread writes cache lines
//! no other thread writes.
//!
//! A scrape reads the shards while calls go on, so it may miss observations made meanwhile,
//! never counts one twice, and its count is the sum of its buckets by construction (the
//! sum of durations may run one observation ahead or behind).

use crate::thread_index::{shard_count, thread_index};
use prometheus::core::{Describer, Metric, MetricVec, MetricVecBuilder};
use prometheus::proto;
use prometheus::HistogramOpts;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters in one [`Block`].
const PER_BLOCK: usize = 16;

/// 128 bytes, aligned so: two cache lines, so neighbouring shards (whole blocks each) never
/// share a line, even with the adjacent-line prefetcher.
#[repr(align(128))]
struct Block([AtomicU64; PER_BLOCK]);

/// One labelled histogram, cheap to clone (the counts are shared).
#[derive(Clone)]
pub struct ShardedHistogram(Arc<Counts>);

struct Counts {
    labels: Vec<proto::LabelPair>,
    upper_bounds: Vec<f64>,
    /// Per shard, `blocks_per_shard` blocks holding the sum of durations in nanoseconds,
    /// then one count per bucket, then the count above the last bound.
    blocks: Box<[Block]>,
    blocks_per_shard: usize,
}

impl ShardedHistogram {
    fn new(upper_bounds: Vec<f64>, labels: Vec<proto::LabelPair>) -> Self {
        let blocks_per_shard = (1 + upper_bounds.len() + 1).div_ceil(PER_BLOCK);
        let blocks = (0..blocks_per_shard * shard_count())
            .map(|_| Block(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        Self(Arc::new(Counts {
            labels,
            upper_bounds,
            blocks,
            blocks_per_shard,
        }))
    }

    /// Counts one observation of `duration`.
    pub fn observe(&self, duration: Duration) {
        let counts = &self.0;
        let shard = thread_index() % counts.shards();
        let seconds = duration.as_secs_f64();
        let bucket = counts
            .upper_bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(counts.upper_bounds.len());
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        counts.cell(shard, 0).fetch_add(nanos, Relaxed);
        counts.cell(shard, 1 + bucket).fetch_add(1, Relaxed);
    }

    /// Observes the time from now until the returned guard drops.
    pub fn start_timer(&self) -> HistogramTimer<'_> {
        HistogramTimer {
            histogram: self,
            started: Instant::now(),
        }
    }

    /// The sum over all shards: nanoseconds, then the count of each bucket (the last one
    /// above every bound).
    fn totals(&self) -> (u64, Vec<u64>) {
        let counts = &self.0;
        let mut sum: u64 = 0;
        let mut buckets = vec![0u64; counts.upper_bounds.len() + 1];
        for shard in 0..counts.shards() {
            sum = sum.wrapping_add(counts.cell(shard, 0).load(Relaxed));
            for (bucket, total) in buckets.iter_mut().enumerate() {
                *total += counts.cell(shard, 1 + bucket).load(Relaxed);
            }
        }
        (sum, buckets)
    }
}

impl Counts {
    fn shards(&self) -> usize {
        self.blocks.len() / self.blocks_per_shard
    }

    /// Counter `index` of shard `shard` (0: the sum, then the buckets).
    fn cell(&self, shard: usize, index: usize) -> &AtomicU64 {
        &self.blocks[shard * self.blocks_per_shard + index / PER_BLOCK].0[index % PER_BLOCK]
    }
}

/// Observes the time since it was made when dropped.
pub struct HistogramTimer<'a> {
    histogram: &'a ShardedHistogram,
    started: Instant,
}

impl Drop for HistogramTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed());
    }
}

impl Metric for ShardedHistogram {
    fn metric(&self) -> proto::Metric {
        let (sum_nanos, buckets) = self.totals();
        let mut histogram = proto::Histogram::default();
        let mut cumulative = 0;
        let mut proto_buckets = Vec::with_capacity(self.0.upper_bounds.len());
        for (bound, count) in self.0.upper_bounds.iter().zip(&buckets) {
            cumulative += count;
            let mut bucket = proto::Bucket::default();
            bucket.set_cumulative_count(cumulative);
            bucket.set_upper_bound(*bound);
            proto_buckets.push(bucket);
        }
        histogram.set_bucket(proto_buckets);
        histogram.set_sample_count(buckets.iter().sum());
        histogram.set_sample_sum(Duration::from_nanos(sum_nanos).as_secs_f64());
        let mut metric = proto::Metric::from_label(self.0.labels.clone());
        metric.set_histogram(histogram);
        metric
    }
}

/// Makes the [`ShardedHistogram`] of each label set for [`ShardedHistogramVec`].
#[derive(Clone)]
pub struct ShardedHistogramBuilder;

impl MetricVecBuilder for ShardedHistogramBuilder {
    type M = ShardedHistogram;
    type P = HistogramOpts;

    fn build<V: AsRef<str>>(
        &self,
        opts: &HistogramOpts,
        values: &[V],
    ) -> prometheus::Result<ShardedHistogram> {
        let desc = opts.describe()?;
        let mut labels: Vec<proto::LabelPair> = desc
            .variable_labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value(value.as_ref().to_owned());
                pair
            })
            .collect();
        labels.extend(desc.const_label_pairs.iter().cloned());
        labels.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(ShardedHistogram::new(opts.buckets.clone(), labels))
    }
}

/// Sharded histograms by label values, registered like a `HistogramVec`.
pub type ShardedHistogramVec = MetricVec<ShardedHistogramBuilder>;

/// A [`ShardedHistogramVec`] with `opts` and these variable labels.
pub fn sharded_histogram_vec(
    opts: HistogramOpts,
    labels: &[&str],
) -> prometheus::Result<ShardedHistogramVec> {
    let opts = opts.variable_labels(labels.iter().map(|l| l.to_string()).collect());
    MetricVec::create(proto::MetricType::HISTOGRAM, ShardedHistogramBuilder, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;
    use prometheus::Encoder;

    fn vec() -> ShardedHistogramVec {
        sharded_histogram_vec(
            HistogramOpts::new("test_seconds", "help").buckets(vec![0.001, 0.01]),
            &["tenant", "hook"],
        )
        .unwrap()
    }

    fn text(collector: &impl Collector) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&collector.collect(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn observations_from_many_threads_are_all_counted_in_their_buckets() {
        let histograms = vec();
        let fast = histograms.with_label_values(&["a", "request"]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let fast = fast.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        fast.observe(Duration::from_micros(500));
                    }
                    fast.observe(Duration::from_millis(5));
                    fast.observe(Duration::from_secs(1));
                });
            }
        });
        let text = text(&histograms);
        for line in [
            "test_seconds_bucket{hook=\"request\",tenant=\"a\",le=\"0.001\"} 4000",
            "test_seconds_bucket{hook=\"request\",tenant=\"a\",le=\"0.01\"} 4004",
            "test_seconds_bucket{hook=\"request\",tenant=\"a\",le=\"+Inf\"} 4008",
            "test_seconds_count{hook=\"request\",tenant=\"a\"} 4008",
            "test_seconds_sum{hook=\"request\",tenant=\"a\"} 6.02",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn buckets_past_one_block_of_counters_are_kept_apart() {
        let bounds: Vec<f64> = (1..=20).map(f64::from).collect();
        let histograms = sharded_histogram_vec(
            HistogramOpts::new("wide_seconds", "help").buckets(bounds),
            &["tenant"],
        )
        .unwrap();
        let wide = histograms.with_label_values(&["a"]);
        for seconds in 1..=21 {
            for _ in 0..seconds {
                wide.observe(Duration::from_secs(seconds));
            }
        }
        let text = text(&histograms);
        for (bound, cumulative) in [("1", 1), ("15", 120), ("16", 136), ("20", 210)] {
            let line = format!("wide_seconds_bucket{{tenant=\"a\",le=\"{bound}\"}} {cumulative}");
            assert!(text.contains(&line), "no {line:?} in\n{text}");
        }
        assert!(
            text.contains("wide_seconds_count{tenant=\"a\"} 231"),
            "{text}"
        );
    }

    #[test]
    fn a_timer_observes_once_when_dropped_and_label_sets_stay_apart() {
        let histograms = vec();
        drop(
            histograms
                .with_label_values(&["a", "request"])
                .start_timer(),
        );
        histograms
            .with_label_values(&["b", "response"])
            .observe(Duration::from_millis(2));
        let text = text(&histograms);
        assert!(text.contains("test_seconds_count{hook=\"request\",tenant=\"a\"} 1"));
        assert!(text.contains("test_seconds_count{hook=\"response\",tenant=\"b\"} 1"));
        assert!(text.contains("test_seconds_bucket{hook=\"response\",tenant=\"b\",le=\"0.001\"} 0"));
    }
}
