//! The queue between the fetcher's I/O thread and its parse thread.
//!
//! Validating a record (PEM, X.509, key) is CPU work; done on the I/O
//! thread it would hold up every other name's Redis replies and every
//! invalidation behind it. The parse thread takes jobs from this queue in
//! arrival order while it is short, and newest first once it is long: a
//! flood of junk records queued ahead of a real name then costs that name
//! one parse, not the whole backlog (the flood's own connections have
//! timed out long before their old jobs come up).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

/// Queue length beyond which the newest job is taken first.
pub const LIFO_AFTER: usize = 16;

/// Which end of the queue the next job comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Oldest,
    Newest,
}

/// The pop rule: arrival order while at most `LIFO_AFTER` jobs wait.
pub fn next_end(queued: usize) -> End {
    if queued > LIFO_AFTER {
        End::Newest
    } else {
        End::Oldest
    }
}

/// A bounded multi-producer queue of jobs with a blocking `pop`.
pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    cap: usize,
}

struct State<T> {
    jobs: VecDeque<T>,
    closed: bool,
}

impl<T> WorkQueue<T> {
    /// At most `cap` jobs wait; beyond that `push` refuses.
    pub fn new(cap: usize) -> Self {
        WorkQueue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            cap: cap.max(1),
        }
    }

    /// Queues `job`; gives it back when the queue is full or closed.
    pub fn push(&self, job: T) -> Result<(), T> {
        let Ok(mut s) = self.state.lock() else {
            return Err(job);
        };
        if s.closed || s.jobs.len() >= self.cap {
            return Err(job);
        }
        s.jobs.push_back(job);
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job (see [`next_end`]); None once closed and drained.
    pub fn pop(&self) -> Option<T> {
        let mut s = self.state.lock().ok()?;
        loop {
            let job = match next_end(s.jobs.len()) {
                End::Oldest => s.jobs.pop_front(),
                End::Newest => s.jobs.pop_back(),
            };
            if job.is_some() {
                return job;
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).ok()?;
        }
    }

    /// No more jobs are accepted; `pop` drains what is queued, then ends.
    pub fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closed = true;
        }
        self.ready.notify_all();
    }

    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.jobs.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn short_queue_is_first_in_first_out() {
        let q = WorkQueue::new(100);
        for i in 0..LIFO_AFTER {
            q.push(i).unwrap();
        }
        let order: Vec<usize> = (0..LIFO_AFTER).map(|_| q.pop().unwrap()).collect();
        assert_eq!(order, (0..LIFO_AFTER).collect::<Vec<_>>());
    }

    #[test]
    fn long_queue_serves_the_newest_job_first() {
        let q = WorkQueue::new(10_000);
        for i in 0..1000 {
            q.push(i).unwrap();
        }
        q.push(4242).unwrap();
        assert_eq!(q.pop(), Some(4242), "the job behind a backlog goes next");
        assert_eq!(q.pop(), Some(999));
        // Once short again, arrival order resumes.
        while q.len() > LIFO_AFTER {
            q.pop();
        }
        assert_eq!(q.pop(), Some(0));
    }

    #[test]
    fn full_or_closed_queue_refuses_and_close_drains() {
        let q = WorkQueue::new(2);
        q.push(1).unwrap();
        q.push(2).unwrap();
        assert_eq!(q.push(3), Err(3));
        q.close();
        assert_eq!(q.push(4), Err(4));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn pop_waits_for_a_job_from_another_thread() {
        let q = Arc::new(WorkQueue::new(4));
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.pop());
        std::thread::sleep(std::time::Duration::from_millis(20));
        q.push(7).unwrap();
        assert_eq!(t.join().unwrap(), Some(7));
        let q3 = q.clone();
        let t = std::thread::spawn(move || q3.pop());
        q.close();
        assert_eq!(t.join().unwrap(), None, "close wakes a waiting pop");
    }
}
