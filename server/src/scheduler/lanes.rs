//! Ready jobs, waiting for a worker: one lane per (queue, kind), and within it a sub-queue per
//! fairness bucket (tenant and concurrency key) served round-robin, so that one tenant's (or
//! key's) backlog does not delay another's; in priority order within each bucket.
//!
//! A deep queue is mostly this structure, so a job here is kept small: its lane and bucket
//! are shared (`Arc`) by every job in them, and each job keeps only what they do not say
//! (its [`Entry`]); the [`ReadyJob`] is put back together when it leaves.

use std::{cmp::Reverse, collections::BTreeMap, sync::Arc};

use super::HashMap;
use crate::domain::{JobId, ReadyJob};

/// Order within a bucket: higher priority, then earlier `run_at`, then submission order.
pub(crate) type Order = (Reverse<i32>, i64, i64);

/// The fairness bucket of a job within its lane: its tenant and concurrency key (empty for
/// none).
pub(crate) type Bucket = (String, String);

/// A lane: the jobs of one (queue, kind).
pub(crate) type LaneKey = (String, String);

/// What a lane keeps of a job beyond its lane, bucket and order.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: JobId,
    deadline_ms: Option<i64>,
    weight: u32,
    attempt: u32,
}

/// Where a ready job sits.
#[derive(Debug, Clone)]
struct Place {
    lane: Arc<LaneKey>,
    bucket: Arc<Bucket>,
    order: Order,
}

/// The head of a bucket, as `best` shows it to the caller's checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head<'a> {
    pub queue: &'a str,
    pub tenant_id: Option<&'a str>,
    pub concurrency_key: Option<&'a str>,
    pub weight: u32,
}

impl Head<'_> {
    /// The quota scopes that apply to it.
    pub(crate) fn scopes(&self) -> Vec<String> {
        crate::domain::scopes(self.queue, self.concurrency_key, self.tenant_id)
    }
}

fn some(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[derive(Debug, Default)]
struct Lane {
    buckets: BTreeMap<Arc<Bucket>, BTreeMap<Order, Entry>>,
    /// The bucket served last: the next pick looks at the ones after it first.
    last: Option<Arc<Bucket>>,
}

impl Lane {
    /// Buckets in round-robin order, starting after the last one served.
    fn rotation(&self) -> impl Iterator<Item = (&Arc<Bucket>, &BTreeMap<Order, Entry>)> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let last = self.last.as_deref();
        let after = self
            .buckets
            .range::<Bucket, _>((last.map_or(Unbounded, Excluded), Unbounded));
        let before = last.into_iter().flat_map(move |l| {
            self.buckets
                .range::<Bucket, (std::ops::Bound<&Bucket>, _)>((Unbounded, Included(l)))
        });
        after.chain(before)
    }
}

/// Every ready job, by lane and bucket, and where each one is.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    lanes: HashMap<Arc<LaneKey>, Lane>,
    index: HashMap<JobId, Place>,
}

impl Lanes {
    pub(crate) fn contains(&self, id: JobId) -> bool {
        self.index.contains_key(&id)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Adds a ready job (a job already here is left as it is).
    pub(crate) fn insert(&mut self, job: ReadyJob) {
        if self.index.contains_key(&job.id) {
            return;
        }
        let key = (job.queue, job.kind);
        let lane_key = match self.lanes.get_key_value(&key) {
            Some((k, _)) => k.clone(),
            None => Arc::new(key),
        };
        let lane = self.lanes.entry(lane_key.clone()).or_default();
        let bucket = (
            job.tenant_id.unwrap_or_default(),
            job.concurrency_key.unwrap_or_default(),
        );
        let bucket_key = match lane.buckets.get_key_value(&bucket) {
            Some((k, _)) => k.clone(),
            None => Arc::new(bucket),
        };
        let order = (Reverse(job.priority), job.run_at_ms, job.seq);
        lane.buckets.entry(bucket_key.clone()).or_default().insert(
            order,
            Entry {
                id: job.id,
                deadline_ms: job.deadline_ms,
                weight: job.weight,
                attempt: job.attempt,
            },
        );
        self.index.insert(
            job.id,
            Place {
                lane: lane_key,
                bucket: bucket_key,
                order,
            },
        );
    }

    /// Takes a job out (it is dispatched, or leaves the queue).
    pub(crate) fn remove(&mut self, id: JobId) -> Option<ReadyJob> {
        let place = self.index.remove(&id)?;
        let lane = self.lanes.get_mut(&place.lane)?;
        let jobs = lane.buckets.get_mut(&place.bucket)?;
        let entry = jobs.remove(&place.order);
        if jobs.is_empty() {
            lane.buckets.remove(&place.bucket);
        }
        if lane.buckets.is_empty() {
            self.lanes.remove(&place.lane);
        }
        let entry = entry?;
        let (queue, kind) = &*place.lane;
        let (tenant, key) = &*place.bucket;
        let (Reverse(priority), run_at_ms, seq) = place.order;
        Some(ReadyJob {
            id: entry.id,
            queue: queue.clone(),
            kind: kind.clone(),
            priority,
            run_at_ms,
            seq,
            deadline_ms: entry.deadline_ms,
            weight: entry.weight,
            tenant_id: some(tenant).map(str::to_owned),
            concurrency_key: some(key).map(str::to_owned),
            attempt: entry.attempt,
        })
    }

    /// Takes the job at `place` as served: its bucket goes to the back of the rotation.
    pub(crate) fn take(&mut self, id: JobId) -> Option<ReadyJob> {
        let place = self.index.get(&id)?.clone();
        let job = self.remove(id)?;
        if let Some(lane) = self.lanes.get_mut(&place.lane) {
            lane.last = Some(place.bucket);
        }
        Some(job)
    }

    /// The best job a worker may take now: in each lane `serves` accepts, the first bucket in
    /// round-robin order that `bucket_ok` accepts and whose head `can_start`; across lanes, the
    /// one that goes first by order. A bucket whose head cannot start does not hold up the
    /// others.
    pub(crate) fn best(
        &self,
        mut serves: impl FnMut(&str, &str) -> bool,
        mut bucket_ok: impl FnMut(&Bucket) -> bool,
        mut can_start: impl FnMut(&Head<'_>) -> bool,
    ) -> Option<JobId> {
        let mut best: Option<(Order, JobId)> = None;
        for (lane_key, lane) in &self.lanes {
            let (queue, kind) = &**lane_key;
            if !serves(queue, kind) {
                continue;
            }
            for (bucket, jobs) in lane.rotation() {
                if !bucket_ok(bucket) {
                    continue;
                }
                let Some((order, entry)) = jobs.first_key_value() else {
                    continue;
                };
                let head = Head {
                    queue,
                    tenant_id: some(&bucket.0),
                    concurrency_key: some(&bucket.1),
                    weight: entry.weight,
                };
                if can_start(&head) {
                    if best.as_ref().is_none_or(|(b, _)| order < b) {
                        best = Some((*order, entry.id));
                    }
                    break;
                }
            }
        }
        best.map(|(_, id)| id)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn job(id: u128, queue: &str, priority: i32, seq: i64) -> ReadyJob {
        ReadyJob {
            id: test_id(id),
            queue: queue.into(),
            kind: "k".into(),
            priority,
            run_at_ms: 0,
            seq,
            deadline_ms: None,
            weight: 1,
            tenant_id: None,
            concurrency_key: None,
            attempt: 0,
        }
    }

    pub(crate) fn test_id(n: u128) -> JobId {
        format!(
            "{:08x}-0000-7000-8000-{:012x}",
            n >> 48,
            n & 0xffff_ffff_ffff
        )
        .parse()
        .expect("a job id")
    }

    fn take_all(lanes: &mut Lanes) -> Vec<JobId> {
        let mut out = Vec::new();
        while let Some(id) = lanes.best(|_, _| true, |_| true, |_| true) {
            lanes.take(id);
            out.push(id);
        }
        out
    }

    #[test]
    fn priority_then_run_at_then_submission_order() {
        let mut lanes = Lanes::default();
        lanes.insert(job(1, "q", 0, 1));
        lanes.insert(job(2, "q", 5, 2));
        lanes.insert(job(3, "q", 0, 3));
        lanes.insert(ReadyJob {
            run_at_ms: 1,
            ..job(4, "q", 0, 4)
        });
        assert_eq!(take_all(&mut lanes), [2, 1, 3, 4].map(test_id));
        assert_eq!(lanes.len(), 0);
    }

    #[test]
    fn buckets_take_turns_and_a_blocked_head_holds_up_only_its_bucket() {
        let mut lanes = Lanes::default();
        for i in 0..4 {
            lanes.insert(ReadyJob {
                tenant_id: Some("a".into()),
                ..job(i, "q", 0, i as i64)
            });
        }
        lanes.insert(ReadyJob {
            tenant_id: Some("b".into()),
            ..job(10, "q", 0, 10)
        });
        let first = lanes.best(|_, _| true, |_| true, |_| true);
        assert_eq!(first, Some(test_id(0)));
        lanes.take(test_id(0));
        // a was served last: b goes next although its job is younger.
        assert_eq!(
            lanes.best(|_, _| true, |_| true, |_| true),
            Some(test_id(10))
        );
        // With b's head unable to start, a's next goes.
        assert_eq!(
            lanes.best(|_, _| true, |_| true, |h| h.tenant_id != Some("b")),
            Some(test_id(1))
        );
        // A worker bound to tenant b sees only b's bucket.
        assert_eq!(
            lanes.best(|_, _| true, |b| b.0 == "b", |_| true),
            Some(test_id(10))
        );
    }

    #[test]
    fn removed_jobs_are_gone_and_a_job_is_held_once() {
        let mut lanes = Lanes::default();
        lanes.insert(job(1, "q", 0, 1));
        lanes.insert(job(1, "q", 9, 1));
        assert_eq!(lanes.len(), 1);
        assert!(lanes.remove(test_id(1)).is_some_and(|j| j.priority == 0));
        assert!(!lanes.contains(test_id(1)));
        assert!(lanes.remove(test_id(1)).is_none());
        assert_eq!(lanes.best(|_, _| true, |_| true, |_| true), None);
    }
}
