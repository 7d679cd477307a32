//! `AdminService.Bulk` against a real coordinator and worker: dead letters requeued and run
//! again, running jobs cancelled on their worker, finished ones deleted, and refusals that
//! change nothing. (The CLI's 100k-job run, interrupted and resumed, is in the CLI's tests.)

mod support;

use switchyard_client::{Client, JobSpec};
use switchyard_proto::v1::{BulkAction, BulkRequest, BulkResponse, JobState};
use switchyard_testkit::Worker;
use tonic::Code;

use support::{assert_names, finished, finished_all, running_on, submit_all};

async fn bulk(client: &Client, request: BulkRequest) -> BulkResponse {
    client.bulk(request).await.expect("bulk")
}

fn action(action: BulkAction) -> BulkRequest {
    BulkRequest {
        action: action as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn dead_letters_are_requeued_running_jobs_cancelled_and_finished_ones_deleted() {
    let (coordinator, client) = support::coordinator().await;
    let worker = Worker::start(&coordinator.url(), &[]).await;

    let failing = submit_all(
        &client,
        (0..4).map(|i| {
            JobSpec::new("default", "fail")
                .payload(format!("boom {i}"))
                .max_attempts(1)
        }),
    )
    .await;
    let fine = submit_all(&client, [JobSpec::new("default", "echo").payload("ok")]).await;
    for job in finished_all(&client, &failing).await {
        assert_eq!(job.state(), JobState::Failed);
    }
    finished(&client, &fine[0]).await;

    // The dead letters of kind `fail`: a dry run counts them and changes nothing.
    let dead = BulkRequest {
        state: JobState::Failed as i32,
        kind: "fail".into(),
        ..action(BulkAction::Requeue)
    };
    let counted = bulk(
        &client,
        BulkRequest {
            dry_run: true,
            ..dead.clone()
        },
    )
    .await;
    assert_eq!((counted.matched, counted.changed), (4, 0));
    assert_eq!(
        client.get(&failing[0]).await.expect("get").state(),
        JobState::Failed
    );

    // Requeued in steps of three: they run again (a second attempt each) and fail again.
    let first = bulk(
        &client,
        BulkRequest {
            limit: 3,
            ..dead.clone()
        },
    )
    .await;
    assert_eq!((first.matched, first.changed), (3, 3));
    assert!(!first.next_cursor.is_empty());
    let rest = bulk(
        &client,
        BulkRequest {
            limit: 3,
            cursor: first.next_cursor,
            ..dead.clone()
        },
    )
    .await;
    assert_eq!((rest.matched, rest.changed), (1, 1));
    assert!(rest.next_cursor.is_empty(), "nothing left");
    for job in finished_all(&client, &failing).await {
        assert_eq!(job.state(), JobState::Failed);
        assert_eq!(job.attempts.len(), 2, "it ran once more: {job:?}");
    }

    // Running jobs are stopped on their worker.
    let running = submit_all(
        &client,
        (0..2).map(|_| {
            JobSpec::new("default", "sleep")
                .payload("60000")
                .label("team", "x")
        }),
    )
    .await;
    running_on(&client, worker.id(), 2).await;
    let stopped = bulk(
        &client,
        BulkRequest {
            label: "team=x".into(),
            ..action(BulkAction::Cancel)
        },
    )
    .await;
    assert_eq!(stopped.changed, 2, "{stopped:?}");
    for job in finished_all(&client, &running).await {
        assert_eq!(job.state(), JobState::Cancelled);
    }
    running_on(&client, worker.id(), 0).await;

    // Deleted: the failed ones go, the rest stay.
    let deleted = bulk(
        &client,
        BulkRequest {
            state: JobState::Failed as i32,
            ..action(BulkAction::Delete)
        },
    )
    .await;
    assert_eq!(deleted.changed, 4);
    for id in &failing {
        let gone = client.get(id).await.expect_err("deleted");
        assert_eq!(gone.code(), Some(Code::NotFound), "{gone:?}");
    }
    assert_eq!(
        client.get(&fine[0]).await.expect("kept").state(),
        JobState::Succeeded
    );
}

#[tokio::test]
async fn a_refused_bulk_request_names_its_field_and_changes_nothing() {
    let (_coordinator, client) = support::coordinator().await;
    let queued = submit_all(&client, (0..3).map(|_| JobSpec::new("parked", "echo"))).await;
    let cancel = || BulkRequest {
        queue: "parked".into(),
        ..action(BulkAction::Cancel)
    };
    let cases = [
        (action(BulkAction::Unspecified), "action"),
        (
            BulkRequest {
                limit: 10_001,
                ..cancel()
            },
            "limit",
        ),
        (
            BulkRequest {
                label: "no-equals-sign".into(),
                ..cancel()
            },
            "label",
        ),
        (
            BulkRequest {
                cursor: "not-a-cursor".into(),
                ..cancel()
            },
            "cursor",
        ),
        (
            BulkRequest {
                job_ids: vec!["nope".into()],
                ..cancel()
            },
            "job_ids[0]",
        ),
        (
            BulkRequest {
                state: 99,
                ..cancel()
            },
            "state",
        ),
    ];
    for (request, field) in cases {
        let status = support::admin(&client)
            .bulk(request)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert_names(&status, field);
    }
    for id in &queued {
        assert_eq!(client.get(id).await.expect("get").state(), JobState::Queued);
    }
}
