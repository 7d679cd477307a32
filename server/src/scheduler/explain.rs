//! Why a ready job is not running, if it is not simply waiting for a free slot: its queue is
//! paused, no connected worker serves it, or a quota holds it back.

use super::HashSet;

use super::{quotas::Quotas, sessions::Sessions};
use crate::domain::{Blocked, ReadyJob};

pub(crate) fn explain(
    job: &ReadyJob,
    paused: &HashSet<String>,
    sessions: &Sessions,
    quotas: &mut Quotas,
    now_ms: i64,
) -> Option<Blocked> {
    if paused.contains(&job.queue) {
        return Some(Blocked::QueuePaused {
            queue: job.queue.clone(),
        });
    }
    if !sessions.iter().any(|s| s.serves(&job.queue, &job.kind)) {
        return Some(Blocked::NoWorker {
            queue: job.queue.clone(),
            kind: job.kind.clone(),
        });
    }
    quotas
        .check(&job.scopes(), job.weight, now_ms)
        .err()
        .map(|refusal| refusal.blocked())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::Quota,
        scheduler::{lanes::tests::job, sessions::tests::info},
    };

    #[test]
    fn the_first_reason_that_holds_is_given() {
        let (mut paused, mut sessions, mut quotas) =
            (HashSet::default(), Sessions::default(), Quotas::default());
        let j = job(1, "q", 0, 1);
        assert!(matches!(
            explain(&j, &paused, &sessions, &mut quotas, 0),
            Some(Blocked::NoWorker { .. })
        ));
        sessions.connect(info(1, &["q"], &[], 1), 0);
        assert_eq!(explain(&j, &paused, &sessions, &mut quotas, 0), None);
        quotas.set(
            &Quota {
                scope: "queue:q".into(),
                max_in_flight: Some(0),
                ..Default::default()
            },
            0,
        );
        assert!(matches!(
            explain(&j, &paused, &sessions, &mut quotas, 0),
            Some(Blocked::Permit { limit: 0, .. })
        ));
        paused.insert("q".to_string());
        assert!(matches!(
            explain(&j, &paused, &sessions, &mut quotas, 0),
            Some(Blocked::QueuePaused { .. })
        ));
    }
}
