//! A bounded queue of disk writes and the thread that does them, in the order queued.
//!
//! The disk tier keeps two kinds of writes off the request threads this way, each with a queue
//! and a thread of its own: tombstones ([`super::tombstones`]) and purge marks
//! ([`super::marks_writer`]). What each does when its queue is full differs, and is theirs to
//! decide; how a queue, its thread and its flush at shutdown work is the same, and lives here.

use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

/// How long a flush at shutdown waits for the queued writes to be done.
pub(super) const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// The sending end of the queue. The thread ends once every handle is dropped and the
/// queue is empty.
pub(super) struct Background<T> {
    jobs: SyncSender<Job<T>>,
}

// A derive would ask for `T: Clone`, which a handle does not need.
impl<T> Clone for Background<T> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

enum Job<T> {
    Do(T),
    /// Answered once every job queued before it is done.
    Flush(mpsc::Sender<()>),
}

/// Why a job was not queued; it comes back with the refusal.
pub(super) enum Refused<T> {
    /// The queue holds its `capacity` jobs.
    Full(T),
    /// The thread has ended.
    Stopped(T),
}

/// What the thread does with the jobs.
pub(super) trait Worker<T>: Send + 'static {
    /// One job, in the order queued.
    fn work(&mut self, job: T);
    /// Called once the queue is empty after a run of jobs, after every [`MAX_RUN`] jobs of a
    /// longer run, and before a flush is answered: where a run's writes are made durable at
    /// once, rather than one job at a time.
    fn caught_up(&mut self) {}
}

/// Jobs done at most between two [`Worker::caught_up`] calls: a queue that never empties (a
/// flood of invalidations, marks handed over in bulk) still gets its writes made durable, and
/// their callers answered, within a bounded number of jobs.
const MAX_RUN: usize = 256;

/// A closure is a worker with nothing to do when caught up.
impl<T, F: FnMut(T) + Send + 'static> Worker<T> for F {
    fn work(&mut self, job: T) {
        self(job)
    }
}

impl<T: Send + 'static> Background<T> {
    /// Starts the thread `name`, which hands each queued job to `worker`. The queue holds at
    /// most `capacity` jobs. The worker must not hold a handle on this queue: the thread would
    /// then never end.
    pub(super) fn start(
        name: &str,
        capacity: usize,
        mut worker: impl Worker<T>,
    ) -> std::io::Result<Self> {
        let (jobs, queued) = mpsc::sync_channel(capacity);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut next = queued.recv().ok();
                let mut run = 0;
                while let Some(job) = next {
                    match job {
                        Job::Do(job) => {
                            worker.work(job);
                            run += 1;
                            if run == MAX_RUN {
                                worker.caught_up();
                                run = 0;
                            }
                        }
                        Job::Flush(done) => {
                            worker.caught_up();
                            run = 0;
                            let _ = done.send(());
                        }
                    }
                    next = match queued.try_recv() {
                        Ok(job) => Some(job),
                        Err(TryRecvError::Disconnected) => None,
                        Err(TryRecvError::Empty) => {
                            worker.caught_up();
                            run = 0;
                            queued.recv().ok()
                        }
                    };
                }
                worker.caught_up();
            })?;
        Ok(Self { jobs })
    }

    /// Queues `job` if there is room, at once.
    pub(super) fn try_queue(&self, job: T) -> Result<(), Refused<T>> {
        self.jobs
            .try_send(Job::Do(job))
            .map_err(|refused| match refused {
                TrySendError::Full(Job::Do(job)) => Refused::Full(job),
                TrySendError::Disconnected(Job::Do(job)) => Refused::Stopped(job),
                TrySendError::Full(Job::Flush(_)) | TrySendError::Disconnected(Job::Flush(_)) => {
                    unreachable!("a job was sent")
                }
            })
    }

    /// Queues `job`, waiting for room as long as it takes. Only for threads that serve no
    /// request: the thread writes behind a disk that may be slow for seconds.
    pub(super) fn queue_waiting(&self, job: T) -> Result<(), T> {
        self.jobs
            .send(Job::Do(job))
            .map_err(|refused| match refused.0 {
                Job::Do(job) => job,
                Job::Flush(_) => unreachable!("a job was sent"),
            })
    }

    /// Blocks until every job queued so far is done (shutdown), at most [`FLUSH_WAIT`],
    /// waiting for room in the queue included. False when they were not all done by then.
    pub(super) fn flush(&self) -> bool {
        let deadline = Instant::now() + FLUSH_WAIT;
        let (done, answered) = mpsc::channel();
        let mut job = Job::Flush(done);
        loop {
            match self.jobs.try_send(job) {
                Ok(()) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    return answered.recv_timeout(left).is_ok();
                }
                // Nothing is left to do once the thread has ended.
                Err(TrySendError::Disconnected(_)) => return true,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    job = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TrySendError::Full(_)) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};

    #[test]
    fn jobs_are_done_in_order_and_a_flush_waits_for_them() {
        let done = Arc::new(Mutex::new(Vec::new()));
        let seen = done.clone();
        let queue = Background::start("test-background", 4, move |n: u32| {
            std::thread::sleep(Duration::from_millis(5));
            seen.lock().unwrap().push(n);
        })
        .unwrap();
        for n in 0..10 {
            assert!(queue.queue_waiting(n).is_ok());
        }
        assert!(queue.flush());
        assert_eq!(*done.lock().unwrap(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_gives_the_job_back() {
        let gate = Arc::new(Barrier::new(2));
        let held = gate.clone();
        let queue = Background::start("test-background", 1, move |_: u32| {
            held.wait();
        })
        .unwrap();
        // The thread takes the first job and blocks on the gate; the second fills the queue.
        assert!(queue.queue_waiting(1).is_ok());
        let second = Instant::now() + Duration::from_secs(5);
        while queue.try_queue(2).is_err() {
            assert!(
                Instant::now() < second,
                "the thread never took the first job"
            );
            std::thread::yield_now();
        }
        assert!(matches!(queue.try_queue(3), Err(Refused::Full(3))));
        gate.wait();
        gate.wait();
        assert!(queue.flush());
    }

    /// The worker hears it has caught up once per run of jobs, not once per job, and before a
    /// flush is answered: a run of purge marks costs one sync, and a flush finds them synced.
    #[test]
    fn a_worker_catches_up_once_per_run_and_before_a_flush() {
        struct Counting {
            gate: Arc<Barrier>,
            since: usize,
            runs: Arc<Mutex<Vec<usize>>>,
        }
        impl Worker<u32> for Counting {
            fn work(&mut self, job: u32) {
                if job == 0 {
                    self.gate.wait();
                }
                self.since += 1;
            }
            fn caught_up(&mut self) {
                if self.since > 0 {
                    self.runs
                        .lock()
                        .unwrap()
                        .push(std::mem::take(&mut self.since));
                }
            }
        }
        let gate = Arc::new(Barrier::new(2));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let worker = Counting {
            gate: gate.clone(),
            since: 0,
            runs: runs.clone(),
        };
        let queue = Background::start("test-background", 2 * MAX_RUN, worker).unwrap();
        // The first job holds the thread until the other nine are queued behind it.
        for n in 0..10 {
            assert!(queue.queue_waiting(n).is_ok());
        }
        gate.wait();
        assert!(queue.flush());
        assert_eq!(*runs.lock().unwrap(), [10]);
        // A run longer than MAX_RUN is caught up with every MAX_RUN jobs.
        runs.lock().unwrap().clear();
        for n in 0..MAX_RUN as u32 + 11 {
            assert!(queue.queue_waiting(n).is_ok());
        }
        gate.wait();
        assert!(queue.flush());
        assert_eq!(*runs.lock().unwrap(), [MAX_RUN, 11]);
    }
}
